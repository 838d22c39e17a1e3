"""A small byte-level GPT trained for a fixed budget; prints val_bpb. The file experiments change.

The knobs are the top-level constants below: plain literals, one per line, so that a proposer can
rewrite them on the AST. The rest of the file only reads them. Data, budget, evaluation and the
summary come from the pinned harness, prepare.py.
"""

import math
import sys
import time

import torch
import torch.nn.functional as F
from prepare import (
    VOCAB_SIZE,
    evaluate_bpb,
    get_budget,
    load_data,
    print_summary,
    setup,
)
from torch import nn

# --- knobs -------------------------------------------------------------------------------------------
N_LAYER = 4  # transformer blocks
N_EMBD = 128  # residual stream width
N_HEAD = 4  # attention heads (head size = N_EMBD // N_HEAD)
MLP_RATIO = 4  # MLP hidden width = MLP_RATIO * N_EMBD
SEQ_LEN = 128  # training context length in bytes
BATCH_SIZE = 16  # sequences per optimizer step
LEARNING_RATE = 0.002  # peak AdamW learning rate
MIN_LR_FRAC = 0.1  # final learning rate as a fraction of the peak
WARMUP_FRAC = 0.05  # fraction of the budget spent in linear warmup
SCHEDULE = "cosine"  # decay after warmup: "cosine" | "linear" | "constant"
WEIGHT_DECAY = 0.1  # AdamW decoupled weight decay on matrices
BETA1 = 0.9  # AdamW beta1
BETA2 = 0.95  # AdamW beta2
GRAD_CLIP = 1.0  # clip the global grad norm to this (0 disables)
DROPOUT = 0.0  # dropout on attention and MLP outputs
ACTIVATION = "gelu"  # MLP nonlinearity: "gelu" | "relu" | "silu" | "relu2"
NORM = "layernorm"  # "layernorm" | "rmsnorm"
POS_EMB = "rope"  # position information: "rope" | "learned" | "none"
QK_NORM = False  # RMS-normalize queries and keys per head
TIE_EMBEDDINGS = True  # share the input embedding and output head weights
INIT_SCALE = 1.0  # multiplier on the 0.02 init std of all weights
BIAS = False  # biases in linear layers and norms
# -----------------------------------------------------------------------------------------------------


def make_norm(dim):
    if NORM == "rmsnorm":
        return nn.RMSNorm(dim)
    return nn.LayerNorm(dim, bias=BIAS)


def activation(x):
    if ACTIVATION == "relu":
        return F.relu(x)
    if ACTIVATION == "silu":
        return F.silu(x)
    if ACTIVATION == "relu2":
        return F.relu(x).square()
    return F.gelu(x)


def rope_tables(seq_len, head_dim):
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    freqs = torch.cat((freqs, freqs), dim=-1)
    return freqs.cos(), freqs.sin()


def apply_rope(x, cos, sin):  # x: (B, H, T, D); rotates the two halves of each head
    t, half = x.size(2), x.size(-1) // 2
    cos, sin = cos[:t].to(x.dtype), sin[:t].to(x.dtype)
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=BIAS)
        self.proj = nn.Linear(n_embd, n_embd, bias=BIAS)

    def forward(self, x, rope):
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        if QK_NORM:
            q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        return F.dropout(self.proj(y), DROPOUT, self.training)


class MLP(nn.Module):
    def __init__(self, n_embd):
        super().__init__()
        hidden = int(MLP_RATIO * n_embd)
        self.fc = nn.Linear(n_embd, hidden, bias=BIAS)
        self.proj = nn.Linear(hidden, n_embd, bias=BIAS)

    def forward(self, x):
        return F.dropout(self.proj(activation(self.fc(x))), DROPOUT, self.training)


class Block(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.ln1 = make_norm(n_embd)
        self.attn = Attention(n_embd, n_head)
        self.ln2 = make_norm(n_embd)
        self.mlp = MLP(n_embd)

    def forward(self, x, rope):
        x = x + self.attn(self.ln1(x), rope)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, n_layer, n_embd, n_head, max_seq_len):
        super().__init__()
        self.max_seq_len = max_seq_len
        self.wte = nn.Embedding(VOCAB_SIZE, n_embd)
        self.wpe = nn.Embedding(max_seq_len, n_embd) if POS_EMB == "learned" else None
        if POS_EMB == "rope":
            cos, sin = rope_tables(max_seq_len, n_embd // n_head)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = make_norm(n_embd)
        self.head = nn.Linear(n_embd, VOCAB_SIZE, bias=False)
        std = 0.02 * INIT_SCALE
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                # GPT-2: residual output projections scaled down with depth
                s = std / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else std
                nn.init.normal_(p, mean=0.0, std=s)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        if TIE_EMBEDDINGS:
            self.head.weight = self.wte.weight

    def forward(self, idx):
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(idx.size(1), device=idx.device))
        x = F.dropout(x, DROPOUT, self.training)
        rope = (self.rope_cos, self.rope_sin) if POS_EMB == "rope" else None
        for block in self.blocks:
            x = block(x, rope)
        return self.head(self.ln_f(x))


class AdamW:
    """AdamW as torch.optim.AdamW computes it on CPU (its single-tensor path), step for step and bit for bit.

    Written out because torch.optim's step imports TorchDynamo on its first call (1.5 CPU-s, a third of
    a short run's cost on CPU), and so that the update is code a proposal can change like any other."""

    def __init__(self, param_groups, lr, betas, eps):
        self.param_groups = [{"lr": lr, "betas": betas, "eps": eps, **g} for g in param_groups]
        self.state = {}

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p not in self.state:
                    self.state[p] = [0, torch.zeros_like(p), torch.zeros_like(p)]
                state = self.state[p]
                state[0] += 1
                step, exp_avg, exp_avg_sq = state
                if wd != 0:
                    p.mul_(1 - lr * wd)
                exp_avg.lerp_(p.grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                bias_correction2 = 1 - beta2**step
                denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(eps)
                p.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**step))

    def zero_grad(self, set_to_none=True):
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None


def lr_at(progress):
    if WARMUP_FRAC > 0 and progress < WARMUP_FRAC:
        return LEARNING_RATE * (progress + 1e-3) / WARMUP_FRAC
    frac = min(1.0, (progress - WARMUP_FRAC) / max(1e-9, 1.0 - WARMUP_FRAC))
    if SCHEDULE == "constant":
        mult = 1.0
    elif SCHEDULE == "linear":
        mult = 1.0 - (1.0 - MIN_LR_FRAC) * frac
    else:
        mult = MIN_LR_FRAC + (1.0 - MIN_LR_FRAC) * 0.5 * (1.0 + math.cos(math.pi * frac))
    return LEARNING_RATE * mult


def valid_heads(n_embd, n_head):
    """The largest head count <= N_HEAD that divides N_EMBD (with an even head size for RoPE)."""
    for h in range(max(1, n_head), 0, -1):
        if n_embd % h == 0 and (POS_EMB != "rope" or (n_embd // h) % 2 == 0):
            return h
    return 1


def main():
    device, seed = setup()
    budget = get_budget()
    train_data, _ = load_data(device)
    cuda = device.startswith("cuda")

    n_embd = N_EMBD + (N_EMBD % 2 if POS_EMB == "rope" else 0)
    n_head = valid_heads(n_embd, N_HEAD)
    if (n_embd, n_head) != (N_EMBD, N_HEAD):
        print(f"note: using N_EMBD={n_embd} N_HEAD={n_head}", file=sys.stderr)
    model = GPT(N_LAYER, n_embd, n_head, SEQ_LEN).to(device)
    num_params = sum(p.numel() for p in model.parameters())

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LEARNING_RATE,
        betas=(BETA1, BETA2),
        eps=1e-8,
    )

    gen = torch.Generator().manual_seed(seed)
    offsets = torch.arange(SEQ_LEN + 1)
    max_start = train_data.numel() - SEQ_LEN - 1
    print(f"params {num_params}, budget {budget.describe()}, device {device}", flush=True)

    step, tokens_seen = 0, 0
    next_log = 0.1
    t0 = time.time()
    while True:
        elapsed = time.time() - t0
        progress = budget.progress(tokens_seen, elapsed)
        if progress >= 1.0:
            break
        lr = lr_at(progress)
        for group in optimizer.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, max_start + 1, (BATCH_SIZE,), generator=gen)
        batch = train_data[(starts[:, None] + offsets).to(device)].long()
        x, y = batch[:, :-1], batch[:, 1:]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            logits = model(x)
        loss = F.cross_entropy(logits.float().view(-1, VOCAB_SIZE), y.reshape(-1))
        loss.backward()
        if GRAD_CLIP > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += BATCH_SIZE * SEQ_LEN
        loss_f = loss.item()
        if not math.isfinite(loss_f):
            print(f"error: loss is {loss_f} at step {step}; training diverged", file=sys.stderr, flush=True)
            sys.exit(3)
        if progress >= next_log:
            print(f"step {step:5d} | loss {loss_f:.4f} | lr {lr:.2e} | {time.time() - t0:.1f}s", flush=True)
            next_log += 0.1
    if cuda:
        torch.cuda.synchronize()
    training_seconds = time.time() - t0

    val_bpb = evaluate_bpb(model, device, max_seq_len=SEQ_LEN)
    if not math.isfinite(val_bpb):
        print(f"error: val_bpb is {val_bpb}", file=sys.stderr, flush=True)
        sys.exit(3)
    print_summary(
        val_bpb=val_bpb,
        training_seconds=training_seconds,
        num_params=num_params,
        num_steps=step,
        tokens=tokens_seen,
        device=device,
    )


if __name__ == "__main__":
    main()
