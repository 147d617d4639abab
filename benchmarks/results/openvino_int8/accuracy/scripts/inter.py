import sys, numpy as np, openvino as ov
from tokenizers import Tokenizer
from prorank_edge.contract import PromptBuilder, ScoringContract, left_pad
ART = "/work/nncf_proto/onnx-fp32"
prompts = PromptBuilder(Tokenizer.from_file(f"{ART}/tokenizer.json"), ScoringContract.load(ART))
ids = prompts.build("Which protein binds ATP?", ["Kinases transfer phosphate groups from ATP to substrates.",
                                                "The river floods every spring.", "ATP " * 20])
d = sys.argv[1]; core = ov.Core()
m = core.read_model(f"{d}/model.xml", f"{d}/model.bin")
names = [n for L in range(0, 30) for n in (f"/body/layers.{L}/self_attn/q_proj/MatMul", f"/body/layers.{L}/self_attn/o_proj/MatMul", f"/body/layers.{L}/mlp/down_proj/MatMul")]
ops = {op.get_friendly_name(): op for op in m.get_ops()}
names = [n for n in names if n in ops]
m.add_outputs([ops[n].output(0) for n in names])
c = core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"})
r = c.create_infer_request()
a, mk = left_pad(ids)
ob = r.infer({"input_ids": a, "attention_mask": mk}); ob = [np.array(v) for v in ob.values()]
os_ = r.infer(dict(zip(("input_ids","attention_mask"), left_pad([ids[0]])))); os_ = [np.array(v) for v in os_.values()]
n0 = len(ids[0])
print("pad", a.shape[1] - n0)
for i, n in enumerate(names):
    b = ob[i + 1][0, -n0:]; s = os_[i + 1][0]
    print(n, float(np.abs(b - s).max()), float(np.abs(s).max()), "pad max", float(np.abs(ob[i+1][0, :-n0]).max()) if a.shape[1] > n0 else None)
