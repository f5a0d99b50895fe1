"""Train the small demo FIM model (GPT-NeoX, SPM prompts) on this interpreter's standard library.

One command, deterministic for a given --seed and --threads:

    python training/train_demo.py --out fim_lsp/models/demo

It writes training/data_manifest.json (every file used, with its sha256), then trains a byte-level
BPE tokenizer and a GPT-NeoX model with the FIM-NeoX recipe (90% of the training pieces become
`<|SUF|> suffix <|PRE|> prefix <|MID|> middle <|endoftext|>`), and saves the folder that
`AutoModelForCausalLM.from_pretrained` and `Tokenizer.from_file` read, plus a loss curve and a log.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shlex
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import Tensor
from tqdm import tqdm
from transformers import GenerationConfig, GPTNeoXConfig, GPTNeoXForCausalLM

HERE = Path(__file__).resolve().parent
SPECIALS = ["<|endoftext|>", "<|padding|>", "<|SUF|>", "<|PRE|>", "<|MID|>"]
EOT, PAD, SUF, PRE, MID = range(len(SPECIALS))
# Tests, the IDE, codec tables and generated data are not the code we want to complete.
EXCLUDED_PARTS = {"site-packages", "test", "tests", "idlelib", "encodings", "pydoc_data"}
VAL_PERCENT = 5
MAX_FILE_BYTES = 300_000


@dataclass
class Config:
    seed: int = 0
    vocab_size: int = 4096
    context: int = 512
    d_model: int = 192
    layers: int = 4
    heads: int = 3
    batch_size: int = 8
    steps: int = 3200
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    min_chunk_tokens: int = 16
    short_chunk_tokens: int = 96
    long_chunk_share: float = 0.5
    warmup_steps: int = 100
    weight_decay: float = 0.1
    fim_rate: float = 0.9
    eval_every: int = 200
    val_rows: int = 64
    threads: int = 2
    device: str = "cpu"


# ---- data -------------------------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_manifest(stdlib: Path) -> dict:
    """List the stdlib's .py files, with hashes, split into train/val by a hash of the path."""
    files = []
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if EXCLUDED_PARTS & set(rel.parts[:-1]) or rel.name.startswith("_sysconfigdata"):
            continue
        data = path.read_bytes()
        if len(data) > MAX_FILE_BYTES:
            continue
        # Split by path, not content, so one file is always on the same side.
        val = int(sha256(rel.as_posix().encode())[:8], 16) % 100 < VAL_PERCENT
        files.append(
            {"path": rel.as_posix(), "sha256": sha256(data), "split": "val" if val else "train"}
        )
    return {
        "python_version": sys.version.split()[0],
        "source": "sysconfig.get_paths()['stdlib'], *.py",
        "excluded_dirs": sorted(EXCLUDED_PARTS),
        "excluded_other": f"_sysconfigdata*.py, files over {MAX_FILE_BYTES} bytes",
        "val_rule": f"int(sha256(path)[:8], 16) % 100 < {VAL_PERCENT}",
        "files": files,
    }


def read_split(stdlib: Path, manifest: dict, split: str) -> list[str]:
    """Read one split's files, checking that none changed since the manifest was built."""
    texts = []
    for entry in manifest["files"]:
        if entry["split"] != split:
            continue
        data = (stdlib / entry["path"]).read_bytes()
        if sha256(data) != entry["sha256"]:
            raise SystemExit(f"{entry['path']} changed since the manifest was written")
        texts.append(data.decode("utf-8", errors="replace"))
    return texts


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE, so decode(encode(x)) == x for any text, indentation included."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,  # in this order, so <|endoftext|> is id 0
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def chunk_length(
    rng: random.Random, min_tokens: int, budget: int, short_max: int, long_share: float
) -> int:
    """A target piece length in tokens, log-uniform up to short_max, or up to budget (long_share)."""
    # No draw at all when long_share is 0, so that setting keeps the pure log-uniform stream.
    top = budget if long_share > 0 and rng.random() < long_share else short_max
    return round(math.exp(rng.uniform(math.log(min_tokens), math.log(top))))


def chunk_documents(
    tok: Tokenizer,
    texts: list[str],
    budget: int,
    rng: random.Random,
    cfg: Config,
) -> list[str]:
    """Cut files at line ends into pieces of a few lines, some up to `budget` tokens.

    Short pieces put many infilling examples (many middle/suffix joins, the suffix a few tokens
    away) into each context, to give a tiny model, trained for an hour, more chances to learn to
    use the suffix; the long ones keep long prompts in distribution.
    """
    min_tokens, short_max, long_share = (
        cfg.min_chunk_tokens,
        cfg.short_chunk_tokens,
        cfg.long_chunk_share,
    )
    chunks = []
    for text in texts:
        lines = text.splitlines(keepends=True)
        counts = [len(e.ids) for e in tok.encode_batch(lines)] if lines else []
        target = chunk_length(rng, min_tokens, budget, short_max, long_share)
        current, used = [], 0
        for line, n in zip(lines, counts, strict=True):
            if used + n > target and current:
                chunks.append("".join(current))
                current, used = [], 0
                target = chunk_length(rng, min_tokens, budget, short_max, long_share)
            if n > budget:  # a huge line (a data table): keep only its head
                line = tok.decode(tok.encode(line).ids[:budget])
                n = budget
            current.append(line)
            used += n
        if current:
            chunks.append("".join(current))
    return chunks


def to_sample(tok: Tokenizer, text: str, rng: random.Random, fim_rate: float) -> list[int]:
    """Token ids for one context: SPM infilling with probability fim_rate, else plain text."""

    def enc(s: str) -> list[int]:
        return tok.encode(s).ids if s else []

    if rng.random() >= fim_rate:
        return [*enc(text), EOT]
    i, j = sorted(rng.randint(0, len(text)) for _ in range(2))
    prefix, middle, suffix = text[:i], text[i:j], text[j:]
    return [SUF, *enc(suffix), PRE, *enc(prefix), MID, *enc(middle), EOT]


def pack(samples: Iterator[list[int]], rows: int, context: int) -> Iterator[tuple[Tensor, ...]]:
    """Batches of (ids, labels, positions), `rows` x `context`: each sample goes whole into the
    first row with room (first fit); one that fits nowhere starts the next batch.

    Positions restart at 0 for every sample, which makes transformers attend within each sample
    only (its packed-sequence mask), as at inference where <|SUF|> is the first token.
    Padding is masked out of the loss (-100).
    """

    def empty() -> tuple[Tensor, Tensor, Tensor, list[int]]:
        ids = torch.full((rows, context), PAD, dtype=torch.long)
        return ids, torch.full_like(ids, -100), torch.zeros_like(ids), [0] * rows

    def finish(ids: Tensor, labels: Tensor, positions: Tensor, used: list[int]) -> tuple:
        for row, n in enumerate(used):
            positions[row, n:] = torch.arange(context - n)
        return ids, labels, positions

    ids, labels, positions, used = empty()
    for sample in samples:
        sample = sample[:context]  # rare: splitting a chunk in three can add a few tokens
        row = next((r for r in range(rows) if used[r] + len(sample) <= context), None)
        if row is None:
            yield finish(ids, labels, positions, used)
            (ids, labels, positions, used), row = empty(), 0
        span = slice(used[row], used[row] + len(sample))
        ids[row, span] = labels[row, span] = torch.tensor(sample)
        positions[row, span] = torch.arange(len(sample))
        used[row] += len(sample)


def samples(tok: Tokenizer, chunks: list[str], cfg: Config) -> Iterator[list[int]]:
    """Endless training samples; every pass over the data draws a new order and new splits."""
    rng = random.Random(cfg.seed)
    while True:
        order = list(range(len(chunks)))
        rng.shuffle(order)
        for k in order:
            yield to_sample(tok, chunks[k], rng, cfg.fim_rate)


# ---- model and training -----------------------------------------------------------------------


def make_model(cfg: Config) -> GPTNeoXForCausalLM:
    config = GPTNeoXConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        intermediate_size=4 * cfg.d_model,
        rotary_pct=0.25,  # as FIM-NeoX-1.3B
        max_position_embeddings=cfg.context,
        use_parallel_residual=True,
        bos_token_id=EOT,
        eos_token_id=EOT,
        pad_token_id=PAD,
    )
    return GPTNeoXForCausalLM(config)


def lr_at(step: int, cfg: Config) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio * lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (
        cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    )


@torch.no_grad()
def evaluate(model: GPTNeoXForCausalLM, val: list[tuple[Tensor, ...]]) -> tuple[float, float]:
    """Mean token loss over the fixed validation batches, and how often <|endoftext|> is the
    top prediction where it belongs: for infilling samples, the middle meeting the suffix."""
    model.eval()
    total, count, eot_hits, eots = 0.0, 0, 0, 0
    for ids, labels, positions in val:
        out = model(input_ids=ids, labels=labels, position_ids=positions, use_cache=False)
        targets = labels[:, 1:]
        n = int((targets != -100).sum())
        total += out.loss.item() * n
        count += n
        at_eot = targets == EOT
        eot_hits += int((out.logits[:, :-1].argmax(-1)[at_eot] == EOT).sum())
        eots += int(at_eot.sum())
    model.train()
    return total / count, eot_hits / max(1, eots)


def train(model, tok, train_chunks, val, cfg: Config) -> dict:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    history = {"step": [], "train_loss": [], "val_step": [], "val_loss": [], "val_eot_acc": []}
    data = pack(samples(tok, train_chunks, cfg), cfg.batch_size, cfg.context)
    tokens, recent = 0, []
    bar = tqdm(range(cfg.steps), file=sys.stderr, desc="train", dynamic_ncols=True)
    for step in bar:
        ids, labels, positions = (t.to(cfg.device) for t in next(data))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        # use_cache=False: with a cache, transformers would not build the per-sample mask.
        loss = model(input_ids=ids, labels=labels, position_ids=positions, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += int((labels != -100).sum())
        recent.append(loss.item())
        if (step + 1) % 10 == 0:
            history["step"].append(step + 1)
            history["train_loss"].append(sum(recent) / len(recent))
            bar.set_postfix(loss=f"{history['train_loss'][-1]:.3f}")
            recent = []
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            history["val_step"].append(step + 1)
            val_loss, eot_acc = evaluate(model, val)
            history["val_loss"].append(val_loss)
            history["val_eot_acc"].append(eot_acc)
            bar.write(
                f"step {step + 1}: val loss {val_loss:.3f}, eot acc {eot_acc:.2f}", file=sys.stderr
            )
    history["tokens_seen"] = tokens
    return history


def plot(history: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a build machine
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(history["step"], history["train_loss"], label="train (mean of 10 steps)")
    ax.plot(history["val_step"], history["val_loss"], "o-", label="validation (held-out files)")
    ax.set(xlabel="step", ylabel="loss (nats/token)", title="demo FIM model")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def save(model, tok: Tokenizer, out: Path) -> float:
    """Write exactly what from_pretrained and Tokenizer.from_file need; return MB on disk."""
    out.mkdir(parents=True, exist_ok=True)
    model.to("cpu").save_pretrained(out)
    GenerationConfig(bos_token_id=EOT, eos_token_id=EOT, pad_token_id=PAD).save_pretrained(out)
    tok.save(str(out / "tokenizer.json"))
    return sum(f.stat().st_size for f in out.iterdir()) / 1e6


def parse_args() -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("fim_lsp/models/demo"))
    parser.add_argument("--manifest", type=Path, default=HERE / "data_manifest.json")
    parser.add_argument("--log", type=Path, default=HERE / "train_log.json")
    parser.add_argument("--plot", type=Path, default=HERE / "loss.png")
    for field, value in asdict(Config()).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args()
    cfg = Config(**{field: getattr(args, field) for field in asdict(Config())})
    return cfg, args


def main() -> None:
    cfg, args = parse_args()
    torch.set_num_threads(cfg.threads)  # results depend on it: keep it for a reproduction
    if cfg.threads == 1:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    torch.manual_seed(cfg.seed)
    started = time.time()

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    manifest = build_manifest(stdlib)
    manifest_text = json.dumps(manifest, indent=1) + "\n"
    args.manifest.write_text(manifest_text)
    train_texts = read_split(stdlib, manifest, "train")
    val_texts = read_split(stdlib, manifest, "val")

    tok = train_tokenizer(train_texts, cfg.vocab_size)
    # Room for the three sentinels, <|endoftext|> and the extra tokens of a three-way split.
    budget = cfg.context - 8
    rng = random.Random(cfg.seed)
    train_chunks = chunk_documents(tok, train_texts, budget, rng, cfg)
    val_chunks = chunk_documents(tok, val_texts, budget, rng, cfg)
    val_samples = (to_sample(tok, c, rng, cfg.fim_rate) for c in val_chunks)
    # A fixed validation set: the first val_rows rows of packed held-out samples.
    val_batches = pack(val_samples, cfg.batch_size, cfg.context)
    val = [
        tuple(t.to(cfg.device) for t in next(val_batches))
        for _ in range(max(1, cfg.val_rows // cfg.batch_size))
    ]
    print(
        f"{len(train_texts)} train / {len(val_texts)} val files, {len(train_chunks)} train chunks",
        file=sys.stderr,
    )

    model = make_model(cfg).to(cfg.device)
    params = sum(p.numel() for p in model.parameters())
    history = train(model, tok, train_chunks, val, cfg)
    megabytes = save(model, tok, args.out)
    wall = time.time() - started

    plot(history, args.plot)
    log = {
        "config": asdict(cfg),
        "command": shlex.join(["python", os.path.relpath(sys.argv[0], HERE.parent), *sys.argv[1:]]),
        "parameters": params,
        "saved_megabytes": round(megabytes, 2),
        "python_version": manifest["python_version"],
        "data_manifest_sha256": sha256(manifest_text.encode()),
        "train_files": len(train_texts),
        "val_files": len(val_texts),
        "train_chunks": len(train_chunks),
        "wall_seconds": round(wall, 1),
        "torch_version": torch.__version__,
        **history,
    }
    args.log.write_text(json.dumps(log, indent=1) + "\n")
    print(
        f"{params / 1e6:.2f}M params, {megabytes:.1f} MB, {history['tokens_seen']} tokens, "
        f"final val loss {history['val_loss'][-1]:.3f}, eot acc {history['val_eot_acc'][-1]:.2f}, {wall / 60:.1f} min",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
