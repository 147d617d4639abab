"""BitDelta-style scale distillation (scratch): fit the per-row scales of a sign adapter so that the merged model's
scores match the trained checkpoint's on training groups (never dev/test). Usage:
s7_distill.py TEACHER SIGN_ADAPTER BASE CONFIG STEPS OUT_ADAPTER"""
import json, shutil, sys, time
from pathlib import Path
import numpy as np, torch
from safetensors.numpy import load_file, save_file
from prorank_edge.adapter import apply_adapter
from prorank_edge.train.common import load_model_and_tokenizer
from prorank_edge.train.config import load_config
from prorank_edge.train.data import load_training_data
from prorank_edge.train.stage2_listwise import GroupScorer, group_scores, _equal_size_groups

teacher_dir, adapter_dir, base_dir, config_path, steps, out = sys.argv[1:7]
steps = int(steps)
cfg = load_config(config_path)
tmp = Path(out + '_merged')
if tmp.exists(): shutil.rmtree(tmp)
apply_adapter(base_dir, adapter_dir, tmp)
teacher, _, prompts = load_model_and_tokenizer(teacher_dir, cfg.max_length)
student, _, _ = load_model_and_tokenizer(str(tmp), cfg.max_length)
teacher.eval(); student.eval()
for p in student.parameters(): p.requires_grad_(False)
stored = load_file(str(Path(adapter_dir) / 'adapter.safetensors'))
modules = dict(student.named_modules())
logs, fitted = {}, {}
def hook(module, args):
    module.weight = module._rest + (module._s0 * torch.exp(module._t))[:, None] * module._signs
for key in stored:
    if not key.endswith('.sign'): continue
    name = key[:-5]
    if 'embed_tokens' in name: continue  # tied to the score head's rows: kept as coded
    mod = modules[name[:-len('.weight')]]
    signs = torch.from_numpy(np.unpackbits(stored[key], axis=1).astype(np.float32) * 2 - 1)
    s0 = torch.from_numpy(stored[name + '.sign_scale'].astype(np.float32))
    w = mod.weight.data
    mod._rest = w - s0[:, None] * signs
    mod._signs, mod._s0 = signs, s0
    mod._t = torch.zeros_like(s0, requires_grad=True)
    del mod._parameters['weight']
    mod.register_forward_pre_hook(hook)
    fitted[name] = mod
params = [m._t for m in fitted.values()]
opt = torch.optim.Adam(params, lr=float(sys.argv[7]) if len(sys.argv) > 7 else 1e-2)
data = load_training_data(cfg.data, cfg.seed)
groups = _equal_size_groups(data, cfg, 5)  # an epoch draw other than training's first ones
t_scorer, s_scorer = GroupScorer(teacher, prompts.positive_token_id, prompts.negative_token_id), \
    GroupScorer(student, prompts.positive_token_id, prompts.negative_token_id)
start = time.time()
for step in range(steps):
    g = [groups[step % len(groups)]]
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        target = group_scores(t_scorer, prompts, g, 'cpu').float()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got = group_scores(s_scorer, prompts, g, 'cpu').float()
    # centred per group: a shift of every score leaves the ranking (and the min-max fusion) as it is
    loss = (((got - got.mean(-1, keepdim=True)) - (target - target.mean(-1, keepdim=True))) ** 2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 10 == 0 or step == steps - 1:
        print(json.dumps({'step': step, 'mse': float(loss.detach()), 'time_s': round(time.time() - start, 1),
                          'mean_t': float(torch.cat([p.detach() for p in params]).abs().mean())}), flush=True)
new = dict(stored)
for name, mod in fitted.items():
    new[name + '.sign_scale'] = (mod._s0 * torch.exp(mod._t.detach())).numpy().astype(np.float16)
Path(out).mkdir(parents=True, exist_ok=True)
save_file(new, str(Path(out) / 'adapter.safetensors'))
for f in ('adapter.json', 'prorank_contract.json'):
    shutil.copyfile(Path(adapter_dir) / f, Path(out) / f)
shutil.rmtree(tmp)
print('written', out)
