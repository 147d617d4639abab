import sys, numpy as np, openvino as ov
d = sys.argv[1]
core = ov.Core()
def fqs(path):
    m = core.read_model(path, path.rsplit("/",1)[0] + "/model.bin")
    res = {}
    for op in m.get_ordered_ops():
        if op.get_type_name() != "FakeQuantize": continue
        src = op.input_value(0).get_node()
        kind = "w" if src.get_type_name() in ("Constant", "Convert") else "a"
        cons = tuple(sorted(t.get_node().get_friendly_name() for t in op.output(0).get_target_inputs()))
        vals = tuple(float(np.array(op.input_value(i).get_node().get_data()).ravel()[0]) if op.input_value(i).get_node().get_type_name()=="Constant" else None for i in range(1,5))
        res[(kind, cons)] = (vals, src.get_friendly_name(), op.get_friendly_name())
    return res
g = {n: fqs(f"{d}/{n}.xml") for n in ("model", "prefix", "suffix")}
for n in ("prefix", "suffix"):
    mk = {k for k in g["model"] if k[0]=="a"}; ok = {k for k in g[n] if k[0]=="a"}
    print(n, "act FQ: model", len(mk), n, len(ok))
    for k in sorted(ok - mk): print("  only in", n, k, g[n][k][:2])
    miss = sorted(mk - ok)
    print("  in model not in", n, len(miss))
    for k in miss[:40]: print("    ", k, g["model"][k][:2])
    for k in ok & mk:
        if g[n][k][0] != g["model"][k][0]: print("  range differs", k, g[n][k][0], g["model"][k][0])
