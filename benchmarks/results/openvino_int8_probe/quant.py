"""NNCF PTQ (int8 weights + activations) of the fp32 IR, then accuracy vs OpenVINO fp32 on eval.npz.
usage: quant.py TAG [--preset mixed|performance] [--sq ALPHA|-1] [--overflow disable|first_layer|enable]
                    [--ignore REGEX ...] [--calib N] [--bias-corr]"""
import argparse, json, time, numpy as np, openvino as ov, nncf
from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters, OverflowFix
from common import *

p = argparse.ArgumentParser()
p.add_argument("tag")
p.add_argument("--preset", default="mixed")
p.add_argument("--sq", type=float, default=None, help="SmoothQuant matmul alpha (default: NNCF's, 0.95); -1 off")
p.add_argument("--overflow", default="disable")
p.add_argument("--ignore", nargs="*", default=[])
p.add_argument("--calib", type=int, default=64)
p.add_argument("--fast-bias", type=int, default=1)
p.add_argument("--eval-bf16", action="store_true")
p.add_argument("--eval-set", default="eval", help="eval (10 test queries) or dev (10 held-out dev queries, round5_256/make_dev.py); outputs of a set other than eval carry its name")
a = p.parse_args()

crows, _ = load_rows(f"{HERE}/calib.npz")
crows = crows[:a.calib]
# one prompt per item: every calibration prompt is 160 tokens (the contract's max_length), so no padding arises
items = []
for r in crows:
    ids, mask = left_pad([r])
    items.append({"input_ids": ids, "attention_mask": mask})
model = ov.Core().read_model(f"{HERE}/ir-fp32/model.xml")
adv = AdvancedQuantizationParameters(overflow_fix=OverflowFix(a.overflow))
if a.sq is not None:
    adv.smooth_quant_alphas = AdvancedSmoothQuantParameters(matmul=a.sq)
kw = dict(model_type=nncf.ModelType.TRANSFORMER, preset=nncf.QuantizationPreset(a.preset), subset_size=len(items),
          fast_bias_correction=bool(a.fast_bias), advanced_parameters=adv)
if a.ignore:
    kw["ignored_scope"] = nncf.IgnoredScope(patterns=a.ignore, validate=False)
t = time.time()
q = nncf.quantize(model, nncf.Dataset(items), **kw)
qt = time.time() - t
out = f"{HERE}/int8_{a.tag}/model.xml"
ov.save_model(q, out, compress_to_fp16=False)
fq = sum(op.get_type_name() == "FakeQuantize" for op in q.get_ordered_ops())

suffix = "" if a.eval_set == "eval" else f"_{a.eval_set}"
rows, z = load_rows(f"{HERE}/{a.eval_set}.npz")
ref = np.load(f"{HERE}/scores_ov_f32{suffix}.npy")
res = {"tag": a.tag, "args": vars(a), "fake_quantize_ops": int(fq), "quantize_s": round(qt, 1), "ir": out}
for prec in (["f32", "bf16"] if a.eval_bf16 else ["f32"]):
    cm = compile_model(out, prec)
    s = score(cm, rows)
    np.save(f"{HERE}/scores_int8_{a.tag}{suffix}_{prec}.npy", s)
    res[f"int8+{prec}_vs_f32"] = compare(ref, s, z["group"])
    c = runtime_precisions(cm)   # after inference: static primitive types are filled in
    res[f"runtime_{prec}"] = {f"{k[0]}/{k[1]}/{k[2]}": v for k, v in c.items()
                              if k[0] in ("FullyConnected", "MatMul", "Subgraph", "ScaledDotProductAttention")}
print(json.dumps(res, indent=1))
json.dump(res, open(f"{HERE}/result_{a.tag}{suffix}.json", "w"), indent=1)
