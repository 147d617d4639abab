set -x
cd /work/nncf_proto
/work/nncf_venv/bin/python ref_dev.py
Q() { /work/nncf_venv/bin/python quant.py "$@" --eval-set dev --eval-bf16 2>&1 | grep -A3 '"int8+bf16_vs_f32"'; }
Q base --ignore '.*self_attn/MatMul.*' '.*mlp/down_proj/MatMul'
Q first2 --ignore '.*self_attn/MatMul.*' '.*mlp/down_proj/MatMul' '.*layers\.[01]/.*'
Q last2 --ignore '.*self_attn/MatMul.*' '.*mlp/down_proj/MatMul' '.*layers\.(28|29)/.*'
Q noo --ignore '.*self_attn/MatMul.*' '.*mlp/down_proj/MatMul' '.*self_attn/o_proj/MatMul'
