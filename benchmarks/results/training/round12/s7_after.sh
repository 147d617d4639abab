#!/bin/bash
# after round 12's training: the 1-bit adapter, its dev figure, then scale distillation and its dev figure
cd /work/main
B=/root/.cache/prorank-edge/models/SmolLM2-135M-Instruct
.venv/bin/python -c "
from prorank_edge.adapter import make_sign_adapter, apply_adapter
import json, numpy as np
info = make_sign_adapter('$B', 'runs/round12/stage2', 'runs/round12/sign_adapter', 'runs/round12/round1_adapter', base_name='smollm2')
e = [v for v in info['relative_error'].values() if v > 0]
print(json.dumps({'bytes': info['bytes'], 'rel_err_mean': float(np.mean(e)), 'min': min(e), 'max': max(e)}), flush=True)
apply_adapter('$B', 'runs/round12/sign_adapter', 'runs/round12/sign_merged')
"
.venv/bin/python /work/probe/s7_dev.py runs/round12/sign_merged 10
.venv/bin/python /work/probe/s7_distill.py runs/round12/stage2 runs/round12/sign_adapter $B train/configs/cpu_smollm2_round12.yaml 40 runs/round12/sign_distilled
.venv/bin/python -c "
from prorank_edge.adapter import apply_adapter
apply_adapter('$B', 'runs/round12/sign_distilled', 'runs/round12/distilled_merged')
"
.venv/bin/python /work/probe/s7_dev.py runs/round12/distilled_merged 10
echo done
