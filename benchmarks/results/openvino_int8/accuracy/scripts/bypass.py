import sys, numpy as np, openvino as ov
from tokenizers import Tokenizer
from prorank_edge.contract import PromptBuilder, ScoringContract, left_pad
ART = "/work/nncf_proto/onnx-fp32"
prompts = PromptBuilder(Tokenizer.from_file(f"{ART}/tokenizer.json"), ScoringContract.load(ART))
ids = prompts.build("Which protein binds ATP?", ["Kinases transfer phosphate groups from ATP to substrates.",
                                                "The river floods every spring.", "ATP " * 20])
d = sys.argv[1]; mode = sys.argv[2]; core = ov.Core()
m = core.read_model(f"{d}/model.xml", f"{d}/model.bin")
n = 0
for op in m.get_ordered_ops():
    if op.get_type_name() == "FakeQuantize" and op.input_value(0).get_node().get_type_name() != "Constant":
        name = op.input_value(0).get_node().get_friendly_name()
        sel = mode == "all" or (mode.startswith("layer") and any(f"smooth/{k}/" in name for k in mode[5:].split(",")))
        if sel:
            for t in list(op.output(0).get_target_inputs()): t.replace_source_output(op.input_value(0))
            n += 1
print("bypassed", n)
c = core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32", **({"DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"} if len(sys.argv) > 3 else {})})
r = c.create_infer_request()
a, mk = left_pad(ids); out = r.infer({"input_ids": a, "attention_mask": mk})
print(np.array(list(out.values())[0]).ravel(), [float(np.array(list(r.infer(dict(zip(("input_ids","attention_mask"), left_pad([x])))).values())[0]).ravel()[0]) for x in ids])
