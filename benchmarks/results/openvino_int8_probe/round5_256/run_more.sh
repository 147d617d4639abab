set -x
cd /work/nncf_proto
/work/nncf_venv/bin/python quant.py noattn_nodown_noo --ignore '.*self_attn/MatMul.*' '.*mlp/down_proj/MatMul' '.*self_attn/o_proj/MatMul' --eval-bf16
/work/nncf_venv/bin/python quant.py noattn_nodown_sq80 --sq 0.8 --ignore '.*self_attn/MatMul.*' '.*mlp/down_proj/MatMul' --eval-bf16
