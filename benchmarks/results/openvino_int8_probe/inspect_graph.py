import openvino as ov, collections
m = ov.Core().read_model("onnx-fp32/model.onnx")
c = collections.Counter(op.get_type_name() for op in m.get_ordered_ops())
print(c.most_common())
mm = [op for op in m.get_ordered_ops() if op.get_type_name() == "MatMul"]
for op in mm[:12] + mm[-4:]:
    print(op.get_friendly_name(), [str(i.get_partial_shape()) for i in op.inputs()], [i.get_source_output().get_node().get_type_name() for i in op.inputs()])
print(m.inputs, m.outputs)
