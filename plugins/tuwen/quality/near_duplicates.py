"""Near-duplicate answers across samples: MinHash over character n-grams, LSH banding, union-find.

The signatures are datasketch's "affine32" MinHash (same seeded permutations, same MurmurHash3
pre-mix; `answer_minhash` returns the datasketch object and a test checks the two agree), and the band
layout (b bands of r rows) is the one datasketch's `MinHashLSH` picks for the threshold (with false
negatives weighted 0.9, see `lsh_bands`). What differs
is the execution: signatures are computed for a chunk of texts at once with numpy, and the bands are
grouped by sorting instead of inserting into `MinHashLSH`'s dict-of-sets index (docs/QUALITY.md
compares the two). Signatures take num_perm × 4 bytes a sample.

Duplicates are resolved over connected components of verified candidate pairs: the smallest sample id
of a component is kept, every later one maps to it. A component can chain (A~B, B~C)
and so hold two samples below the threshold; with a 0.8 threshold that stays rare and errs on the side
of dropping a near-copy.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np

# The reason a sample whose answers near-copy another's is failed with (beside the per-sample checks).
NEAR_DUPLICATE_REASON = "near_duplicate_answer"

if TYPE_CHECKING:
    from datasketch import MinHash

SampleId = TypeVar("SampleId", bound=Hashable)

DEFAULT_THRESHOLD = 0.8
DEFAULT_NUM_PERM = 64
DEFAULT_SHINGLE_CHARS = 5
# Two answers that share their first 400 characters (after normalising) are near-duplicates for
# training purposes; hashing only those keeps the cost per sample bounded for long answers.
DEFAULT_MAX_CHARS = 400
DEFAULT_SEED = 1
# Texts per numpy batch: 16 texts × ≤400 shingles × 64 permutations of uint32 stay in the CPU cache.
CHUNK_TEXTS = 16
# (false positive, false negative) weights for choosing the band layout; see lsh_bands.
LSH_WEIGHTS = (0.1, 0.9)

_POLY_BASE = np.uint64(0x100000001B3)  # FNV prime: odd, spreads code points across 64 bits
_MASK32 = np.uint64(0xFFFFFFFF)
_BAND_MIX = np.uint64(0x9E3779B97F4A7C15)


def normalize_answer(text: str, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """Lower-case, drop whitespace, keep the first max_chars characters. (Punctuation stays: stripping
    it costs a regex pass per answer and changes few 5-grams of a real near-copy.)"""
    return "".join(text[: max_chars * 2].lower().split())[:max_chars]


def _fmix32(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, the pre-mix datasketch's affine32 scheme applies."""
    values = values ^ (values >> np.uint32(16))
    values = values * np.uint32(0x85EBCA6B)
    values = values ^ (values >> np.uint32(13))
    values = values * np.uint32(0xC2B2AE35)
    return values ^ (values >> np.uint32(16))


def shingle_hashes(text: str, shingle_chars: int = DEFAULT_SHINGLE_CHARS) -> np.ndarray:
    """32-bit hashes of the character n-grams of an already normalised text (one per position)."""
    return _chunk_shingles([text], shingle_chars)[0]


def _chunk_shingles(texts: Sequence[str], shingle_chars: int) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes of many texts at once: (hashes, text index of each hash), texts in order.

    A polynomial hash over a sliding window of code points, computed for the concatenated texts in
    `shingle_chars` vector operations; windows that cross a text boundary are dropped. A text shorter
    than one shingle contributes a single hash of the whole text."""
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    codes = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    total = len(codes)
    text_of_position = np.repeat(np.arange(len(texts)), lengths)
    ends = np.cumsum(lengths)
    hashes = np.empty(0, dtype=np.uint64)
    owners = np.empty(0, dtype=np.int64)
    if total >= shingle_chars:
        windows = total - shingle_chars + 1
        rolling = np.zeros(windows, dtype=np.uint64)
        for offset in range(shingle_chars):
            rolling = rolling * _POLY_BASE + codes[offset : offset + windows]
        starts = np.arange(windows)
        owner = text_of_position[:windows]
        inside = starts + shingle_chars <= ends[owner]
        hashes, owners = rolling[inside], owner[inside]
    short = np.flatnonzero((lengths > 0) & (lengths < shingle_chars))
    if short.size:
        extra = []
        for index in short.tolist():
            value = 0
            for char in texts[index]:
                value = (value * int(_POLY_BASE) + ord(char)) & 0xFFFFFFFFFFFFFFFF
            extra.append(value)
        hashes = np.concatenate([hashes, np.array(extra, dtype=np.uint64)])
        owners = np.concatenate([owners, short])
        order = np.argsort(owners, kind="stable")
        hashes, owners = hashes[order], owners[order]
    folded = ((hashes ^ (hashes >> np.uint64(32))) & _MASK32).astype(np.uint32)
    return folded, owners


def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def minhash_signatures(
    texts: Sequence[str],
    num_perm: int = DEFAULT_NUM_PERM,
    shingle_chars: int = DEFAULT_SHINGLE_CHARS,
    seed: int = DEFAULT_SEED,
    permutations: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """MinHash signatures (len(texts) × num_perm, uint32) of normalised texts.

    Row i equals `datasketch.MinHash(num_perm, seed, scheme="affine32")` updated with text i's shingle
    hashes. An empty text gets the empty signature (all 0xFFFFFFFF)."""
    a, b = permutations or _permutations(num_perm, seed)
    signatures = np.full((len(texts), num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    for begin in range(0, len(texts), CHUNK_TEXTS):
        chunk = texts[begin : begin + CHUNK_TEXTS]
        hashes, owners = _chunk_shingles(chunk, shingle_chars)
        if not len(hashes):
            continue
        permuted = np.multiply(_fmix32(hashes)[:, None], a[None, :])  # uint32 wraparound is mod 2^32
        np.add(permuted, b[None, :], out=permuted)
        present = np.unique(owners)
        offsets = np.searchsorted(owners, present)
        signatures[begin + present] = np.minimum.reduceat(permuted, offsets, axis=0)
    return signatures


def answer_minhash(
    text: str,
    num_perm: int = DEFAULT_NUM_PERM,
    shingle_chars: int = DEFAULT_SHINGLE_CHARS,
    max_chars: int = DEFAULT_MAX_CHARS,
    seed: int = DEFAULT_SEED,
) -> MinHash:
    """The datasketch MinHash of one answer (for ad-hoc comparisons; the batch path does not use it)."""
    from datasketch import MinHash

    hashes = shingle_hashes(normalize_answer(text, max_chars), shingle_chars)
    minhash = MinHash(num_perm=num_perm, seed=seed, hashfunc=int, scheme="affine32")
    minhash.update_batch(hashes.tolist())
    return minhash


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) that datasketch's MinHashLSH chooses for this threshold and num_perm,
    weighted against false negatives: every candidate is verified on its signature afterwards, so a
    false positive costs one vectorised comparison while a false negative is a duplicate shipped."""
    from datasketch import MinHashLSH

    index = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
    return index.b, index.r


def find_near_duplicate_answers(
    samples: Iterable[tuple[SampleId, str]],
    threshold: float = DEFAULT_THRESHOLD,
    num_perm: int = DEFAULT_NUM_PERM,
    shingle_chars: int = DEFAULT_SHINGLE_CHARS,
    max_chars: int = DEFAULT_MAX_CHARS,
    seed: int = DEFAULT_SEED,
) -> dict[SampleId, SampleId]:
    """Map each near-duplicate sample id to the sample id it duplicates (the kept one).

    `samples` are (sample_id, answer text); ids must be orderable, the smallest id of a group is
    kept. A pair counts when the estimated Jaccard similarity of their character `shingle_chars`-gram
    sets is at least `threshold`. Empty answers are ignored."""
    # Stream: hash chunk by chunk and keep only ids and signatures (164 MB for 641,868 samples at
    # 64 permutations), never every answer text at once.
    permutations = _permutations(num_perm, seed)
    ids: list[SampleId] = []
    parts: list[np.ndarray] = []
    pending: list[str] = []
    for sample_id, text in samples:
        normalized = normalize_answer(text, max_chars)
        if not normalized:
            continue
        ids.append(sample_id)
        pending.append(normalized)
        if len(pending) == CHUNK_TEXTS * 64:
            parts.append(minhash_signatures(pending, num_perm, shingle_chars, seed, permutations))
            pending = []
    if pending:
        parts.append(minhash_signatures(pending, num_perm, shingle_chars, seed, permutations))
    if len(ids) < 2:
        return {}
    by_id = sorted(range(len(ids)), key=lambda row: cast(Any, ids[row]))  # ids are str or int: orderable
    ids = [ids[row] for row in by_id]
    signatures = np.concatenate(parts)[by_id]
    pairs = _candidate_pairs(signatures, *lsh_bands(threshold, num_perm))
    if not len(pairs):
        return {}
    agreement = (signatures[pairs[:, 0]] == signatures[pairs[:, 1]]).mean(axis=1)
    verified = pairs[agreement >= threshold]
    roots = _component_roots(len(ids), verified)
    return {ids[row]: ids[root] for row, root in enumerate(roots) if root != row}


def _candidate_pairs(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(earlier, later) row pairs that share a band: each row against the first and the previous row
    of its bucket, so a bucket of n rows yields O(n) pairs, never O(n²)."""
    found = []
    count = len(signatures)
    for band in range(bands):
        key = np.zeros(count, dtype=np.uint64)
        for column in signatures[:, band * rows : (band + 1) * rows].T.astype(np.uint64):
            key = (key ^ column) * _BAND_MIX
        order = np.argsort(key, kind="stable")  # equal keys stay in row (= sample id) order
        sorted_keys = key[order]
        same_as_previous = np.concatenate([[False], sorted_keys[1:] == sorted_keys[:-1]])
        if not same_as_previous.any():
            continue
        bucket_start = np.maximum.accumulate(np.where(~same_as_previous, np.arange(count), 0))
        later = order[same_as_previous]
        found.append(np.stack([order[bucket_start[same_as_previous]], later], axis=1))
        found.append(np.stack([order[np.flatnonzero(same_as_previous) - 1], later], axis=1))
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(found), axis=0)


def _component_roots(count: int, pairs: np.ndarray) -> list[int]:
    """Union-find over verified pairs; every row's root is the smallest row of its component."""
    parent = list(range(count))

    def find(row: int) -> int:
        while parent[row] != row:
            parent[row] = parent[parent[row]]
            row = parent[row]
        return row

    for first, second in pairs.tolist():
        root_a, root_b = find(first), find(second)
        if root_a != root_b:
            parent[max(root_a, root_b)] = min(root_a, root_b)
    return [find(row) for row in range(count)]
