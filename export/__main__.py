"""python -m export describe|merge|import-descriptions|embed|import-embeddings|pack|verify|inspect|dump-torch ..."""
import argparse
import json
import math
import sys
from pathlib import Path

from ms_gpt4image.cli import (command_line, int_at_least, interrupted, nonnegative_int, positive_float, positive_int,
                              sigterm_interrupts)

from .ray_engine import CONNECT_TIMEOUT, LOST_AFTER_MAX  # no Ray import: that waits for --engine ray


def _source_args(p):
    p.add_argument("--source", default="fashion-mnist", help="fashion-mnist | idx | imagefolder | cifar10 | cifar100")
    p.add_argument("--root", default=None, help="dataset root (default for fashion-mnist: the Debian package's)")
    p.add_argument("--allow-empty-classes", action="store_true",
                   help="imagefolder: keep class folders without images as classes (default: an error)")


def _open(a, split):
    from .readers import open_source
    return open_source(a.source, a.root, split, allow_empty_classes=a.allow_empty_classes)


def _limit(n_total, limit):
    return range(n_total if limit is None else min(limit, n_total))


def _shard(text):
    from .describe import parse_shard
    try:
        return parse_shard(text)
    except ValueError as e:  # argparse reports an ArgumentTypeError's own message
        raise argparse.ArgumentTypeError(str(e)) from None


# What an interruption (Ctrl-C, SIGTERM) leaves, in one line, and the command line that goes on from there.

def _describe_kept(a, again):
    from .io_utils import read_jsonl
    out = Path(a.out)
    parts = Path(f"{out}.parts")
    if a.engine == "ray" and parts.is_dir():
        blocks = len(list(parts.glob("*-*.json")))
        total = f" of {math.ceil(len(a.indices) / a.block_size)}" if getattr(a, "indices", None) else ""
        return f"{blocks}{total} blocks ({a.block_size} images each) kept in {parts} (resumable); " \
               f"continue with: {again}"
    done = {r["index"] for r in read_jsonl(out)} if out.exists() else set()
    wanted = getattr(a, "indices", None)  # unset when interrupted before the source was opened
    kept = f"{len(done)}" if wanted is None else f"{len(done & set(wanted))} of {len(wanted)}"
    return f"{kept} descriptions kept in {out} (resumable); continue with: {again}"


def _embed_kept(a, again):
    parts = Path(f"{a.out}.parts")
    chunks = len(list(parts.glob("chunk_*.npy")))
    if not chunks:
        return f"no chunk of {a.chunk_size} descriptions was finished, nothing kept; start again with: {again}"
    total = math.ceil(json.loads((parts / "state.json").read_text())["count"] / a.chunk_size)
    return f"{chunks} of {total} chunks ({a.chunk_size} descriptions each) kept in {parts}; the same command " \
           f"continues with the rest: {again}"


def _nothing_written(a, again):
    return f"nothing written under {a.out}; start again with: {again}"


def _unfinished(a, again):
    return f"{a.cmd} did not finish; run it again: {again}"


def _ray_options(a):
    from .ray_engine import RayOptions
    return RayOptions(a.address, a.workers, a.num_gpus_per_worker, a.num_cpus_per_worker, a.connect_timeout,
                      kept=lambda: a.kept(a, a.again))


def cmd_describe(a):
    from .desc_cache import open_cache
    from .describe import run_describe
    from .describers import create_describer, load_plugins
    if a.engine == "ray" and a.shard:
        raise ValueError("--shard splits the images by hand; with --engine ray the workers share them out: drop --shard")
    load_plugins(a.plugin)
    src = _open(a, a.split)
    indices = list(_limit(len(src), a.limit))
    if a.shard:
        i, n = a.shard
        indices = indices[i::n]
    a.indices = indices  # for the interruption's count
    kwargs = dict(prompt=a.prompt, prompt_template=a.prompt_template, max_new_tokens=a.max_new_tokens,
                  device=a.device, dtype=a.dtype, **({"model": a.model} if a.model else {}))
    cache_path = Path(a.out).parent / "describe_cache.sqlite" if a.cache is None else a.cache
    if a.engine == "ray":
        from .ray_describe import run_describe_ray
        return run_describe_ray(src, a.backend, kwargs, a.plugin, a.out, indices, a.batch_size, a.block_size,
                                a.skip_bad, cache_path, _ray_options(a))
    describer = create_describer(a.backend, **kwargs)
    return run_describe(src, describer, a.out, indices, a.batch_size, a.skip_bad, open_cache(cache_path))


def cmd_import_descriptions(a):
    from .imports import import_descriptions
    return import_descriptions(a.src, _open(a, a.split), a.out, a.format, a.prompt)


def cmd_import_embeddings(a):
    from .imports import import_embeddings
    return import_embeddings(a.src, a.descriptions, a.out, a.model, a.key, a.normalize)


def cmd_merge(a):
    from .describe import merge_descriptions
    return merge_descriptions(a.parts, a.out)


def cmd_embed(a):
    from .descriptions import DescriptionSet
    from .embed import create_encoder, run_embed
    if a.engine == "ray":
        from .ray_embed import run_embed_ray
        return run_embed_ray(a.descriptions, a.out, a.backend, a.model, a.device, a.batch_size, a.chunk_size,
                             _ray_options(a))
    descs = DescriptionSet(a.descriptions)  # a bad file is told before the encoder loads
    return run_embed(descs, a.out, create_encoder(a.backend, a.model, a.device), a.batch_size, a.chunk_size)


def cmd_pack(a):
    from .pack import run_pack
    train, ev = _open(a, "train"), _open(a, a.eval_split)
    spec = {"kind": a.source, "root": str(Path(a.root).resolve()) if a.root else None,
            "train_split": "train", "eval_split": a.eval_split, "allow_empty_classes": a.allow_empty_classes}
    m = run_pack(train, ev, a.descriptions, a.embeddings, a.out, _limit(len(ev), a.eval_limit), a.shards,
                 a.overwrite, spec, a.max_shard_mb)
    return {"out": a.out, **{split: {"count": m["splits"][split]["count"], "files": len(m["splits"][split]["files"])}
                             for split in ("train", "eval")}}


def cmd_verify(a):
    from .verify import run_verify
    spec = {"kind": a.source, "root": a.root} if (a.source or a.root) else None
    return run_verify(a.data_dir, a.check_images, spec, a.no_source)


def cmd_inspect(a):
    from .inspect_set import run_inspect
    return run_inspect(a.descriptions, a.embeddings, a.out, a.compare, a.compare_embeddings, a.source, a.root,
                       a.name, a.compare_name, a.seed, a.probe_rows, a.near_dup_queries, a.tsne_classes,
                       a.tsne_per_class, a.allow_empty_classes)


def cmd_dump_torch(a):
    from .torch_state import dump
    return dump(a.src, a.out, a.key, a.unsafe_pickle)


def _nonnegative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number >= 0")
    return value


def _engine_args(p, what):
    g = p.add_argument_group("Ray engine (docs/describe-and-embed.md#on-a-ray-cluster)")
    g.add_argument("--engine", choices=("single", "ray"), default="single",
                   help=f"single: this process (default); ray: {what} over a Ray cluster's workers, one model each "
                        "(pip install 'ms_gpt4image[ray]')")
    g.add_argument("--address", default=None,
                   help="the Ray cluster: HOST:PORT of `ray start --head`, 'auto' (the cluster this host is in) or "
                        "ray://HOST:10001; default: RAY_ADDRESS, else the cluster this host runs (ray start), else a Ray "
                        "started on this host for the command")
    g.add_argument("--workers", type=positive_int, default=None,
                   help="workers (one model each); default: one per GPU of the cluster, or per CPU slot without GPUs")
    g.add_argument("--num-gpus-per-worker", type=_nonnegative_float, default=None,
                   help="default 1 when the cluster has GPUs, else 0")
    g.add_argument("--num-cpus-per-worker", type=positive_float, default=1.0)
    g.add_argument("--connect-timeout", type=positive_float, default=CONNECT_TIMEOUT, metavar="SECONDS",
                   help="give up, with the address and what to check, when the head at --address does not answer "
                        "within SECONDS at the start (joining it may take as long again), or stops answering for "
                        f"SECONDS mid-run (at most {LOST_AFTER_MAX:g}; what is done is kept); default "
                        f"{CONNECT_TIMEOUT:g}")
    return g


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("describe", help="write one description per training image (JSONL, resumable)")
    _source_args(p)
    p.add_argument("--split", default="train")
    p.add_argument("--limit", type=positive_int, default=None, help="first N images of the canonical order")
    p.add_argument("--backend", default="template",
                   help="template | blip2 | instructblip | llava | llava-next | vlm (any chat VLM) | a plugin's")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE_OR_FILE",
                   help="import this module or .py file first; it registers backends with @register_describer")
    p.add_argument("--model", default=None, help="hub id or local path of the VLM (default: the backend's)")
    p.add_argument("--prompt", default="short", help="short | long | your own text ({class_name} allowed)")
    p.add_argument("--prompt-template", default=None,
                   help="format string around the prompt, e.g. 'Question: {prompt} Answer:' "
                        "(default: the backend's; chat backends use the processor's chat template)")
    p.add_argument("--max-new-tokens", type=positive_int, default=None, help="default 30 for short, 120 otherwise")
    p.add_argument("--cache", default=None,
                   help="description cache (SQLite) keyed by image content; default describe_cache.sqlite "
                        "beside --out; 'none' disables it")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: bf16 on CUDA)")
    p.add_argument("--skip-bad", action="store_true",
                   help="record undecodable images in OUT.skipped.jsonl and go on (default: stop with an error)")
    p.add_argument("--shard", type=_shard, default=None, metavar="i/n",
                   help="describe only every n-th image starting at i (one part per GPU/host; merge after)")
    p.add_argument("--out", required=True)
    g = _engine_args(p, "blocks of images")
    g.add_argument("--block-size", type=positive_int, default=None,
                   help="images per block, the unit a worker takes, retries and writes (OUT.parts/); a multiple of "
                        "--batch-size (default 16 batches)")
    p.set_defaults(fn=cmd_describe, kept=_describe_kept)

    p = sub.add_parser("merge", help="merge the JSONL parts of sharded describe runs")
    p.add_argument("parts", nargs="+")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_merge)

    p = sub.add_parser("import-descriptions", help="an existing description set -> descriptions JSONL")
    _source_args(p)
    p.add_argument("--split", default="train")
    p.add_argument("--src", required=True, help="torch-saved list of strings (authors' ImageNet set), .jsonl or .csv")
    p.add_argument("--format", default="auto", help="auto | torch-list | jsonl | csv")
    p.add_argument("--prompt", default=None, help="the prompt the set was written with (recorded in the meta)")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_import_descriptions)

    p = sub.add_parser("embed", help="encode descriptions into L2-normalised float32 embeddings")
    p.add_argument("--descriptions", required=True)
    p.add_argument("--out", required=True, help="output prefix: writes PREFIX.npy, PREFIX.index.npy, PREFIX.meta.json")
    p.add_argument("--backend", default="sentence-transformers", help="sentence-transformers | hf-clip | open-clip")
    p.add_argument("--model", default=None, help="default: the packaged all-MiniLM-L6-v2")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--chunk-size", type=positive_int, default=65536,
                   help="descriptions per chunk saved under PREFIX.parts/: an interrupted run resumes at the first "
                        "missing chunk")
    p.add_argument("--device", default=None)
    _engine_args(p, "chunks")
    p.set_defaults(fn=cmd_embed, kept=_embed_kept)

    p = sub.add_parser("import-embeddings", help="an existing [N, k] embedding tensor -> embeddings files for pack")
    p.add_argument("--src", required=True, help=".pth / .npy / .safetensors; row i = source index i")
    p.add_argument("--descriptions", required=True)
    p.add_argument("--out", required=True, help="output prefix, as for embed")
    p.add_argument("--model", default=None, help="the encoder that made them (recorded in the manifest)")
    p.add_argument("--key", default=None, help="tensor name inside a dict / safetensors file")
    p.add_argument("--normalize", action="store_true", help="L2-normalise rows (else rows must already be unit norm)")
    p.set_defaults(fn=cmd_import_embeddings)

    p = sub.add_parser("pack", help="write train/eval MindRecord and the manifest")
    _source_args(p)
    p.add_argument("--descriptions", required=True)
    p.add_argument("--embeddings", required=True, help="prefix given to embed --out")
    p.add_argument("--eval-split", default="test")
    p.add_argument("--eval-limit", type=positive_int, default=None)
    p.add_argument("--shards", type=positive_int, default=1,
                   help="files per split at least (e.g. the device count); more when one would pass --max-shard-mb")
    p.add_argument("--max-shard-mb", type=positive_float, default=1024,
                   help="size cap per MindRecord file; it bounds pack's memory (MindRecord indexes a file in memory)")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(fn=cmd_pack, kept=_nothing_written)

    p = sub.add_parser("verify", help="read packed MindRecord back and check it against the manifest")
    p.add_argument("data_dir")
    p.add_argument("--source", default=None, help="the source to check against (default: the manifest's)")
    p.add_argument("--root", default=None)
    p.add_argument("--no-source", action="store_true", help="check the files alone, not against the source")
    p.add_argument("--check-images", type=int_at_least(0, also=(-1,)), default=256,
                   help="images per split decoded and compared pixel for pixel with the source (spread evenly; -1: all)")
    p.set_defaults(fn=cmd_verify)

    p = sub.add_parser("inspect", help="is this description set worth training with? report.json/.md and figures")
    p.add_argument("--descriptions", required=True)
    p.add_argument("--embeddings", required=True, help="prefix given to embed --out")
    p.add_argument("--out", required=True, help="report folder: report.json, report.md, tsne.png, lengths.png")
    p.add_argument("--compare", default=None, metavar="DESCRIPTIONS", help="a second set, reported beside the first")
    p.add_argument("--compare-embeddings", default=None, metavar="PREFIX", help="the second set's embeddings")
    p.add_argument("--source", default=None, help="take class names from this source (default: the descriptions' "
                                                  "meta, else a manifest.json beside them, else label numbers)")
    p.add_argument("--root", default=None)
    p.add_argument("--allow-empty-classes", action="store_true", help="imagefolder: as for describe and pack")
    p.add_argument("--name", default=None, help="column name of the set (default: the file's stem)")
    p.add_argument("--compare-name", default=None)
    p.add_argument("--seed", type=nonnegative_int, default=0, help="fixes every sample")
    p.add_argument("--probe-rows", type=positive_int, default=20000,
                   help="stratified sample for the k-NN and linear probes")
    p.add_argument("--near-dup-queries", type=positive_int, default=5000,
                   help="rows whose nearest neighbour is searched among all rows")
    p.add_argument("--tsne-classes", type=positive_int, default=50)
    p.add_argument("--tsne-per-class", type=positive_int, default=250)
    p.set_defaults(fn=cmd_inspect, kept=_nothing_written)

    p = sub.add_parser("dump-torch", help="PyTorch checkpoint -> .npz state dict (used by ms_gpt4image convert)")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--key", default=None, help="state_dict | model | model_ema (default: the first present)")
    p.add_argument("--unsafe-pickle", action="store_true", help="torch.load with weights_only=False (trusted files)")
    p.set_defaults(fn=cmd_dump_torch)

    a = ap.parse_args(argv)
    if getattr(a, "block_size", 0) is None:
        a.block_size = 16 * a.batch_size
    sigterm_interrupts()
    a.again = command_line("python -m export", argv)  # goes on from what an interruption or a lost cluster leaves
    try:
        result = a.fn(a)
    except KeyboardInterrupt:
        return interrupted(getattr(a, "kept", _unfinished)(a, a.again))
    except (ValueError, KeyError, IndexError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
