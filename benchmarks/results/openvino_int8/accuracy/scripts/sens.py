"""Per-layer activation-quantizer sensitivity: bypass chosen activation FakeQuantizes of an int8 model.xml, score dev40."""
import sys, json, re, numpy as np, openvino as ov
sys.path.insert(0, "/work/nncf_proto")
from common import load_rows, compare, score
d, nq, specs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
rows, z = load_rows("/work/ovx/dev40/dev40.npz"); ref = np.load("/work/ovx/dev40/ref_f32.npy")
sel = z["group"] < nq; rows = [r for r, s in zip(rows, sel) if s]; ref, grp = ref[sel], z["group"][sel]
core = ov.Core()
for spec in specs:  # "none", "all", or comma list of regexes on the consumer names
    m = core.read_model(f"{d}/model.xml", f"{d}/model.bin"); n = 0
    for op in list(m.get_ordered_ops()):
        if op.get_type_name() == "FakeQuantize" and op.input_value(0).get_node().get_type_name() != "Constant":
            cons = [t.get_node().get_friendly_name() for t in op.output(0).get_target_inputs()]
            if spec == "all" or (spec != "none" and any(re.search(p, c) for p in spec.split(",") for c in cons)):
                for t in list(op.output(0).get_target_inputs()): t.replace_source_output(op.input_value(0)); n += 1
    c = core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0",
                                      "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": "2"})
    s = score(c, rows)
    r = {k: round(v, 4) for k, v in compare(ref, s, grp).items()}
    print(json.dumps({"spec": spec, "bypassed": n, **r}), flush=True)
