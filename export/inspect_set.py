"""`python -m export inspect`: is this description set worth training with?

Reads a descriptions JSONL and its embeddings (PREFIX.npy, PREFIX.index.npy, PREFIX.meta.json) and
writes report.json, report.md, tsne.png (the paper's Fig. 4: t-SNE of the text embeddings) and
lengths.png under --out. With --compare a second set gets the same metrics in a second column,
lengths.png overlays both and tsne_compare.png shows both t-SNE panels on the same classes and rows.

Exact, from one streamed pass over the texts keeping a few bytes per row: row and class counts,
words per description (mean, median, p95 from a histogram of word counts), the exact-duplicate rate
(one 64-bit hash per row) and the share of descriptions that name their class.
Sampled, so that memory follows the sample and not the set:
* near-duplicate rate (nearest other row at cosine > 0.99): up to --near-dup-queries query rows,
  each searched against ALL rows, chunk by chunk, in the same pass that checks every row is finite
  and of unit norm;
* k-NN (cosine, k=10) and linear-probe (logistic regression on standardised embeddings) accuracy,
  chance and the most confused classes: up to --probe-rows rows, probe_rows // classes per class,
  split 80/20 stratified;
* t-SNE: up to --tsne-classes classes drawn with --seed, up to --tsne-per-class rows each.
Samples take the rows whose image index has the smallest seeded hash (per class where stratified),
so two sets that share indices are sampled on the same images: the comparison is paired.
Embeddings are memory-mapped; only sampled rows, or one chunk at a time, are read.
"""
import collections
import contextlib
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from tqdm import tqdm

from .descriptions import DescriptionSet
from .io_utils import atomic_path

NEAR_DUP_COS = 0.99
BLOCK_FLOATS = 1 << 25  # bounds each near-duplicate chunk and its similarity block (128 MB each)
EXACT = ["count", "classes", "words", "duplicate_rate", "names_class_share"]


# ---------------------------------------------------------------------------------------------
# inputs

def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npy file ({e})") from None


def open_set(desc_path, emb_prefix):
    """The DescriptionSet, the memory-mapped embeddings and their meta, checked against each other."""
    descs = DescriptionSet(desc_path)
    npy, idx, meta_path = (Path(f"{emb_prefix}{s}") for s in (".npy", ".index.npy", ".meta.json"))
    for p in (npy, idx, meta_path):
        if not p.exists():
            raise FileNotFoundError(f"embeddings file not found: {p}")
    emb, index = _load_npy(npy, True), _load_npy(idx, False)
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_path}: not valid JSON ({e})") from None
    if emb.ndim != 2 or not np.issubdtype(emb.dtype, np.floating):
        raise ValueError(f"{npy}: expected a float [N, dim] array, got {emb.dtype} {emb.shape}")
    if (meta.get("count"), meta.get("dim")) != emb.shape:
        raise ValueError(f"{meta_path} says count {meta.get('count')}, dim {meta.get('dim')} "
                         f"but {npy} is {emb.shape[0]} x {emb.shape[1]}")
    if not np.array_equal(index, descs.indices):
        n = min(len(index), len(descs))
        diff = np.flatnonzero(index[:n] != descs.indices[:n])
        p = int(diff[0]) if len(diff) else n
        at = lambda a: int(a[p]) if p < len(a) else "none"  # noqa: E731
        raise ValueError(f"{idx} does not match {desc_path} ({len(index)} vs {len(descs)} rows): first difference "
                         f"at row {p}, index {at(index)} vs {at(descs.indices)}; re-run embed")
    if descs.labels.min() < 0:
        raise ValueError(f"{desc_path}: negative label {descs.labels.min()}")
    return descs, emb, meta


def class_names_for(desc_path, n_labels: int, source: Optional[str] = None, root: Optional[str] = None,
                    allow_empty_classes: bool = False):
    """(names, where they came from): the source's, the describe meta's, a manifest.json beside the
    descriptions, or else the label numbers."""
    names, origin = None, "labels"
    if source:
        from .readers import open_source
        src = open_source(source, root, "train", allow_empty_classes=allow_empty_classes)
        names, origin = list(src.class_names), f"source {source}"
    else:
        for path in (Path(f"{desc_path}.meta.json"), Path(desc_path).parent / "manifest.json"):
            if path.exists():
                try:
                    names = json.loads(path.read_text()).get("class_names")
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: not valid JSON ({e})") from None
                if names:
                    origin = str(path)
                    break
    if not names:
        return [str(c) for c in range(n_labels)], "labels"
    if n_labels > len(names):
        raise ValueError(f"{desc_path}: label {n_labels - 1} but {origin} names {len(names)} classes")
    return list(names), origin


# ---------------------------------------------------------------------------------------------
# exact, streamed

def name_pattern(class_name: str):
    """Any synonym of the class name ('tench, Tinca tinca'; 'T-shirt/top') as whole words, any case,
    plural 's'/'es' allowed; None when the name has no words."""
    syns = [s.split() for s in re.split(r"[,/]", class_name.replace("_", " "))]
    alts = "|".join(r"\s+".join(map(re.escape, words)) for words in syns if words)
    # lookarounds, not \b: a name may start or end with a non-word character
    return re.compile(rf"(?<!\w)(?:{alts})(?:e?s)?(?!\w)", re.IGNORECASE) if alts else None


def hist_percentile(hist: np.ndarray, q: float) -> float:
    """np.percentile (linear interpolation) of the values a histogram counts, without the values."""
    cum = np.cumsum(hist)
    pos = (cum[-1] - 1) * q / 100
    lo, hi = (int(np.searchsorted(cum, k, side="right")) for k in (math.floor(pos), math.ceil(pos)))
    return lo + (hi - lo) * (pos - math.floor(pos))


def text_stats(descs: DescriptionSet, names: List[str], check_names: bool, label: str) -> Dict:
    patterns = [name_pattern(n) for n in names]
    hashes = np.empty(len(descs), dtype=np.uint64)
    words = collections.Counter()
    named = 0
    for p, r in enumerate(tqdm(descs.records(), total=len(descs), desc=f"inspect {label}: texts", unit="text")):
        text = r["description"]
        hashes[p] = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
        words[len(text.split())] += 1
        pattern = patterns[descs.labels[p]]
        named += bool(pattern and pattern.search(text))
    hist = np.zeros(max(words) + 1, dtype=np.int64)
    hist[list(words)] = list(words.values())
    _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    return {
        "words": {"mean": float(hist @ np.arange(len(hist)) / len(descs)), "median": hist_percentile(hist, 50),
                  "p95": hist_percentile(hist, 95), "max": len(hist) - 1},
        "duplicate_rate": float(np.mean(counts[inverse] > 1)),
        # label numbers as names would make this share meaningless
        "names_class_share": named / len(descs) if check_names else None,
    }, hist


# ---------------------------------------------------------------------------------------------
# sampled

def row_keys(indices: np.ndarray, seed: int) -> np.ndarray:
    """A pseudo-random key per image index (splitmix64 of index and seed): samples of the smallest
    keys pick the same images in every set that has them."""
    x = indices.astype(np.uint64) + np.uint64(seed * 0x9E3779B97F4A7C15 % 2 ** 64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def sample_rows(labels: np.ndarray, keys: np.ndarray, per_class: int, classes=None) -> np.ndarray:
    """Ascending positions of the `per_class` smallest-key rows of each class (of `classes` if given)."""
    order = np.lexsort((keys, labels))
    lab = labels[order]
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    rank = np.arange(len(lab)) - np.repeat(starts, np.diff(np.r_[starts, len(lab)]))
    keep = rank < per_class
    if classes is not None:
        keep &= np.isin(lab, classes)
    return np.sort(order[keep])


def near_duplicates(emb: np.ndarray, queries: np.ndarray, indices: np.ndarray, npy: str, label: str) -> np.ndarray:
    """Cosine of each query row's nearest other row, searched over every row; checks every row on the way."""
    q = np.asarray(emb[queries], dtype=np.float32)  # sorted fancy indexing reads only these rows
    best = np.full(len(q), -np.inf, dtype=np.float32)
    step = max(256, BLOCK_FLOATS // max(len(q), emb.shape[1]))
    with tqdm(total=len(emb), desc=f"inspect {label}: near-duplicates", unit="row") as bar:
        for start in range(0, len(emb), step):
            chunk = np.asarray(emb[start:start + step], dtype=np.float32)
            finite = np.isfinite(chunk).all(axis=1)
            norms = np.linalg.norm(chunk, axis=1)
            bad = np.flatnonzero(~finite | (np.abs(norms - 1) > 1e-3))
            if len(bad):
                r = start + int(bad[0])
                what = "not finite" if not finite[bad[0]] else f"of norm {norms[bad[0]]:.4g}, not L2-normalised"
                raise ValueError(f"{npy}: row {r} (index {indices[r]}) is {what}")
            sims = chunk @ q.T
            own = np.flatnonzero((queries >= start) & (queries < start + len(chunk)))
            sims[queries[own] - start, own] = -np.inf  # a row is not its own neighbour
            np.maximum(best, sims.max(axis=0), out=best)
            bar.update(len(chunk))
    return best


def probe(x: np.ndarray, y: np.ndarray, names: List[str], seed: int) -> Dict:
    """k-NN (cosine) and linear-probe (logistic regression) held-out accuracy on an 80/20 stratified split, and the
    class pairs the k-NN confuses most."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import confusion_matrix
    from sklearn.model_selection import train_test_split
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    # a class needs a row on each side of the split
    counts = np.bincount(y)
    keep = counts[y] >= 2
    x, y = x[keep], y[keep]
    classes = np.unique(y)
    out = {"probe_classes_dropped": int(np.count_nonzero(counts == 1))}
    if len(classes) < 2:
        return {**out, "knn_accuracy": None, "probe_accuracy": None, "chance": None, "most_confused": [],
                "probe_note": "fewer than 2 classes with 2 sampled rows"}
    # every class can have a held-out row; each has 2 rows, so the train side keeps one per class too
    test_size = max(math.ceil(0.2 * len(y)), len(classes))
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_size, stratify=y, random_state=seed)
    k = min(10, len(ytr))
    pred = KNeighborsClassifier(n_neighbors=k, metric="cosine").fit(xtr, ytr).predict(xte)
    # standardised: on unit-norm rows with many classes the first gradient is under lbfgs's tolerance
    # and the raw probe stops at iteration 0, at chance
    lin = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(xtr, ytr)
    cm = confusion_matrix(yte, pred, labels=classes)
    held = cm.sum(axis=1)
    i, j = np.triu_indices(len(classes), 1)
    both = (cm + cm.T)[i, j]
    rate = both / np.maximum(held[i] + held[j], 1)
    top = [t for t in np.argsort(-rate, kind="stable")[:10] if both[t] > 0]
    return {**out, "knn_accuracy": float(np.mean(pred == yte)), "knn_k": k,
            "probe_accuracy": float(lin.score(xte, yte)), "chance": float(np.bincount(yte).max() / len(yte)),
            "probe_train": len(ytr), "probe_test": len(yte),
            "most_confused": [{"classes": [names[classes[i[t]]], names[classes[j[t]]]],
                               "labels": [int(classes[i[t]]), int(classes[j[t]])],
                               "rate": float(rate[t]), "count": int(both[t])} for t in top]}


def tsne_points(x: np.ndarray, seed: int) -> Optional[np.ndarray]:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits
    if len(x) < 5:
        return None
    if x.shape[1] > 50:
        x = PCA(min(50, len(x)), random_state=seed).fit_transform(x)
    # on small inputs OpenMP threads gain nothing, and beside another busy process their spinning
    # barriers cost seconds (80 points: 0.2 s on one thread, 33 s on two with the cores taken)
    with threadpool_limits(1 if len(x) < 2000 else None, user_api="openmp"):
        return TSNE(2, perplexity=min(30.0, (len(x) - 1) / 3), init="pca", random_state=seed).fit_transform(x)


# ---------------------------------------------------------------------------------------------
# figures and report

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> None:
    fig.savefig(path, format="png", dpi=110, bbox_inches="tight")  # format: a temporary name has no .png
    _pyplot().close(fig)


def plot_tsne(panels, classes, names: List[str], path: Path) -> None:
    """panels: [(title, points or None, labels)]; each class has one colour in every panel."""
    plt = _pyplot()
    m = len(classes)
    cmap = plt.get_cmap("tab10" if m <= 10 else "tab20" if m <= 20 else "turbo")
    colour = {c: cmap(k if m <= 20 else k / max(m - 1, 1)) for k, c in enumerate(classes)}
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 6), squeeze=False)
    for ax, (title, pts, labels) in zip(axes[0], panels):
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
        if pts is None:
            ax.text(0.5, 0.5, "too few rows for t-SNE", ha="center", transform=ax.transAxes)
            continue
        for c in classes:
            sel = labels == c
            ax.scatter(pts[sel, 0], pts[sel, 1], s=6, color=colour[c], label=names[c])
    if m <= 20:
        axes[0, -1].legend(loc="center left", bbox_to_anchor=(1, 0.5), markerscale=3, fontsize=8)
    _save(fig, path)


def plot_lengths(hists: Dict[str, np.ndarray], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, hist in hists.items():
        ax.stairs(hist / hist.sum(), np.arange(len(hist) + 1) - 0.5, fill=True, alpha=0.5, label=name)
    # from the shortest description to p99.5: a few very long ones would squash the plot
    ax.set_xlim(min(int(np.flatnonzero(h)[0]) for h in hists.values()) - 1.5,
                max(hist_percentile(h, 99.5) for h in hists.values()) + 1.5)
    ax.set(xlabel="words per description", ylabel="share of descriptions")
    ax.legend()
    _save(fig, path)


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


ROWS = [
    ("descriptions", lambda s: f"`{s['descriptions']}`"),
    ("embeddings", lambda s: f"{s['model']} ({s['dim']} dims)"),
    ("rows", lambda s: str(s["count"])),
    ("classes present", lambda s: str(s["classes"])),
    ("words: mean / median / p95", lambda s: "{mean:.1f} / {median:g} / {p95:g}".format(**s["words"])),
    ("exact duplicates", lambda s: _pct(s["duplicate_rate"])),
    ("near duplicates (cos > 0.99)", lambda s: f"{_pct(s['near_duplicate_rate'])} of {s['near_duplicate_queries']}"),
    ("names its class", lambda s: _pct(s["names_class_share"])),
    ("k-NN accuracy", lambda s: _pct(s["knn_accuracy"]) + (f" (k={s['knn_k']})" if "knn_k" in s else "")),
    ("linear probe accuracy", lambda s: _pct(s["probe_accuracy"])),
    ("chance (majority class)", lambda s: _pct(s["chance"])),
    ("probe rows: train / test", lambda s: f"{s.get('probe_train', 0)} / {s.get('probe_test', 0)}"),
]


def report_md(sets: Dict[str, Dict], figures: List[str]) -> str:
    lines = ["# Description set report", "", "| | " + " | ".join(sets) + " |", "|---" * (len(sets) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(fn(s) for s in sets.values()) + " |" for label, fn in ROWS]
    for name, s in sets.items():
        lines += ["", f"## Most confused classes (k-NN): {name}", ""]
        lines += [f"{n}. {p['classes'][0]} / {p['classes'][1]}: {_pct(p['rate'])} ({p['count']} held-out rows)"
                  for n, p in enumerate(s["most_confused"], 1)] or ["none"]
    lines += [""] + [f"![{f}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------

def run_inspect(descriptions, embeddings, out_dir, compare=None, compare_embeddings=None, source=None, root=None,
                name=None, compare_name=None, seed: int = 0, probe_rows: int = 20000, near_dup_queries: int = 5000,
                tsne_classes: int = 50, tsne_per_class: int = 250, allow_empty_classes: bool = False) -> Dict:
    if (compare is None) != (compare_embeddings is None):
        raise ValueError("--compare and --compare-embeddings go together")
    specs = [(name or Path(descriptions).stem, descriptions, embeddings)]
    if compare:
        other = compare_name or Path(compare).stem
        specs.append((other + " (2)" if other == specs[0][0] else other, compare, compare_embeddings))
    # every input is checked before the long passes
    opened = [open_set(d, e) for _, d, e in specs]
    names = [class_names_for(d, int(descs.labels.max()) + 1, source, root, allow_empty_classes)
             for (_, d, _), (descs, _, _) in zip(specs, opened)]

    # the same t-SNE classes in every panel: drawn from the classes both sets have (else the first's)
    present = [np.unique(descs.labels) for descs, _, _ in opened]
    pool = np.intersect1d(present[0], present[-1])
    pool = pool if len(pool) else present[0]
    tsne_cls = np.sort(np.random.default_rng(seed).choice(pool, min(tsne_classes, len(pool)), replace=False))

    sets, hists, panels = {}, {}, []
    for (label, d, e), (descs, emb, meta), (cls_names, origin), classes in zip(specs, opened, names, present):
        stats, hists[label] = text_stats(descs, cls_names, origin != "labels", label)
        keys = row_keys(descs.indices, seed)
        queries = np.sort(np.argsort(keys, kind="stable")[:near_dup_queries])
        best = near_duplicates(emb, queries, descs.indices, f"{e}.npy", label)
        rows = sample_rows(descs.labels, keys, max(1, probe_rows // len(classes)))
        probed = probe(np.asarray(emb[rows], dtype=np.float32), descs.labels[rows], cls_names, seed)
        trows = sample_rows(descs.labels, keys, tsne_per_class, tsne_cls)
        panels.append((f"{label} ({len(trows)} rows)", tsne_points(np.asarray(emb[trows], dtype=np.float32), seed),
                       descs.labels[trows]))
        sets[label] = {"descriptions": str(d), "embeddings": str(e), "model": meta.get("model"),
                       "dim": int(emb.shape[1]), "class_names_from": origin, "count": len(descs),
                       "classes": len(classes), **stats,
                       "near_duplicate_rate": float(np.mean(best > NEAR_DUP_COS)),
                       "near_duplicate_queries": len(queries), "probe_rows": len(rows), **probed,
                       "tsne_rows": len(trows)}

    out_dir = Path(out_dir)
    tsne_png = out_dir / ("tsne_compare.png" if compare else "tsne.png")
    sizes = lambda key: {s: v[key] for s, v in sets.items()}  # noqa: E731
    report = {
        "sets": sets,
        "sampling": {
            "exact": EXACT,
            "selection": f"rows whose image index has the smallest splitmix64 hash with seed {seed} (per class when "
                         f"stratified): the same images in every set that has them",
            "sampled": {
                "near_duplicate_rate": {
                    "how": f"up to {near_dup_queries} query rows, each against all rows (exact when all are queries)",
                    "rows": sizes("near_duplicate_queries")},
                "knn_accuracy, probe_accuracy, chance, most_confused": {
                    "how": f"up to {probe_rows} rows, probe_rows // classes per class; 80/20 stratified split",
                    "rows": sizes("probe_rows")},
                "tsne": {"how": f"{len(tsne_cls)} classes drawn with seed {seed}, up to {tsne_per_class} rows each",
                         "rows": sizes("tsne_rows")},
            },
        },
        "tsne_classes": [names[0][0][c] for c in tsne_cls],
        "seed": seed,
        "files": {k: str(out_dir / f) for k, f in (("json", "report.json"), ("markdown", "report.md"),
                                                   ("tsne", tsne_png.name), ("lengths", "lengths.png"))},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    # every file under a temporary name first, all renamed when the block ends (in reverse order: report.json
    # last, its presence marks a complete report), so an error or an interruption leaves OUT as it was
    with contextlib.ExitStack() as stack:
        tmp = {f: stack.enter_context(atomic_path(out_dir / f))
               for f in ("report.json", "report.md", tsne_png.name, "lengths.png")}
        plot_tsne(panels, tsne_cls, names[0][0], tmp[tsne_png.name])
        plot_lengths(hists, tmp["lengths.png"])
        tmp["report.md"].write_text(report_md(sets, [tsne_png.name, "lengths.png"]))
        tmp["report.json"].write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        (out_dir / "report.json").unlink(missing_ok=True)  # an old one must not vouch for a mix of files
    return report
