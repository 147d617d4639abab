set -x
cd /work/nncf_proto
/work/nncf_venv/bin/python ref.py
/work/nncf_venv/bin/python quant.py noattn_nodown --ignore '.*self_attn/MatMul.*' '.*mlp/down_proj/MatMul' --eval-bf16
/work/nncf_venv/bin/python time_int8.py --int8 /work/nncf_proto/int8_noattn_nodown/model.xml
cd /work/main && .venv/bin/python /work/nncf_proto/time_torch.py bfloat16 float32
