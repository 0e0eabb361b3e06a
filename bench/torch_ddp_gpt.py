#!/usr/bin/env python3
"""PyTorch DDP (gloo, CPU) training the same character-level GPT as
`workloads/train/examples/train_gpt.rs`, the peer for its tokens/s.

Same model (4 layers, 4 heads, 128-dim embeddings, context 64, GPT-2 style init), same text
(`workloads/train/data/shakespeare.txt`, first 90% to train, last 10% to validate), same
batch per rank (12), AdamW (beta2 0.99, weight decay 0.1), warm-up then cosine decay,
clipping at 1.0; `--ranks` processes of one thread each. Prints `name value unit` lines:

    torch_ddp_tokens_per_s_<n>r <tokens/s> tokens/s

    torch_ddp_val_loss_<n>r <loss> loss

Usage: bench/torch_ddp_gpt.py [--ranks 2] [--steps 600]
(needs PyTorch: python3 -m venv /work/torch-venv && /work/torch-venv/bin/pip install torch numpy)
"""
import argparse
import math
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
TEXT = os.path.join(HERE, "..", "workloads", "train", "data", "shakespeare.txt")
LAYERS, HEADS, EMBED, CONTEXT, BATCH = 4, 4, 128, 64, 12


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = nn.LayerNorm(EMBED)
        self.qkv = nn.Linear(EMBED, 3 * EMBED)
        self.proj = nn.Linear(EMBED, EMBED)
        self.norm2 = nn.LayerNorm(EMBED)
        self.up = nn.Linear(EMBED, 4 * EMBED)
        self.down = nn.Linear(4 * EMBED, EMBED)

    def forward(self, x):
        b, t, e = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, HEADS, e // HEADS).unbind(2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, e))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class Gpt(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.tokens = nn.Embedding(vocab, EMBED)
        self.positions = nn.Embedding(CONTEXT, EMBED)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.norm = nn.LayerNorm(EMBED)
        self.head = nn.Linear(EMBED, vocab, bias=False)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * LAYERS) if name.endswith(("proj.weight", "down.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, ids, targets):
        t = ids.shape[1]
        x = self.tokens(ids) + self.positions(torch.arange(t))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def worker(rank, world, port, steps, out):
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    text = open(TEXT, encoding="ascii").read()
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([lookup[c] for c in text], dtype=torch.long)
    split = len(ids) * 9 // 10
    train, val = ids[:split], ids[split:]
    torch.manual_seed(1337)
    model = Gpt(len(chars))
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    g = torch.Generator().manual_seed(1337 + rank)

    def batch(data):
        at = torch.randint(len(data) - CONTEXT - 1, (BATCH,), generator=g)
        x = torch.stack([data[i:i + CONTEXT] for i in at])
        y = torch.stack([data[i + 1:i + CONTEXT + 1] for i in at])
        return x, y

    warmup = max(1, min(100, steps // 10))
    busy = 0.0
    for step in range(steps):
        lr = 1e-3 * (step + 1) / warmup if step < warmup else 1e-4 + 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))) * 9e-4
        for group in opt.param_groups:
            group["lr"] = lr
        started = time.perf_counter()
        x, y = batch(train)
        loss = ddp(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step > 0:
            busy += time.perf_counter() - started
    model.eval()
    with torch.no_grad():
        g.manual_seed(12345)
        val_loss = sum(model(*batch(val)).item() for _ in range(8)) / 8
    if rank == 0:
        out.put(((steps - 1) * BATCH * CONTEXT * world / busy, val_loss))
    dist.barrier()
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--port", type=int, default=29533)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, args.ranks, args.port, args.steps, out)) for r in range(args.ranks)]
    for p in procs:
        p.start()
    tokens_per_s, val_loss = out.get(timeout=3600)
    for p in procs:
        p.join()
    n = args.ranks
    print(f"torch_ddp_tokens_per_s_{n}r {tokens_per_s:.0f} tokens/s")
    print(f"torch_ddp_val_loss_{n}r {val_loss:.4f} loss")
    return 0 if all(p.exitcode == 0 for p in procs) else 1


if __name__ == "__main__":
    sys.exit(main())
