import sys, numpy as np, openvino as ov
from tokenizers import Tokenizer
from prorank_edge.contract import PromptBuilder, ScoringContract, left_pad
ART = "/work/nncf_proto/onnx-fp32"
prompts = PromptBuilder(Tokenizer.from_file(f"{ART}/tokenizer.json"), ScoringContract.load(ART))
ids = prompts.build("Which protein binds ATP?", ["Kinases transfer phosphate groups from ATP to substrates.",
                                                "The river floods every spring.", "ATP " * 20])
d = sys.argv[1]; core = ov.Core()
for cfg in ({}, {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}):
    c = core.compile_model(core.read_model(f"{d}/model.xml", f"{d}/model.bin"), "CPU", {"INFERENCE_PRECISION_HINT": "f32", **cfg})
    r = c.create_infer_request()
    a, m = left_pad(ids); out = r.infer({"input_ids": a, "attention_mask": m})
    batched = np.array(list(out.values())[0]).ravel()
    single = [float(np.array(list(r.infer(dict(zip(("input_ids","attention_mask"), left_pad([x])))).values())[0]).ravel()[0]) for x in ids]
    print(cfg, batched, single)
