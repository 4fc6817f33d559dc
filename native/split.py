"""The 3-part split of a banded half-storage matrix over T row blocks (see pars3.h).

Rows are cut into T blocks of about equal modelled traffic (12 bytes per stored nonzero, 28 per
row). Entries of block t whose column j lies before the block are middle when j falls inside
the block's window [w_t, r_t) and outer otherwise. The window length L_t is chosen per block
to minimise a cost model: every window row costs `buffer_cost` (zeroed, then added back) and
every entry left outside costs `far_cost` (a scattered triple read after the barrier). On a
band matrix the window is the band; a few long-range outliers stay outside it.
"""

import numpy as np

from .spmv import BandSplit, HalfMatrix

BYTES_PER_NONZERO = 12
BYTES_PER_ROW = 28


def row_blocks(rowptr: np.ndarray, blocks: int) -> np.ndarray:
    """Row offsets (blocks+1,) of blocks of about equal weight 12 nnz_i + 28; each row goes to
    the block holding the midpoint of its weight."""
    n = len(rowptr) - 1
    assert blocks >= 1 and n >= 0
    weight = BYTES_PER_NONZERO * np.diff(rowptr) + BYTES_PER_ROW
    midpoint = np.cumsum(weight) - weight / 2
    targets = midpoint[-1] * np.arange(1, blocks) / blocks if n else np.zeros(blocks - 1)
    starts = np.searchsorted(midpoint, targets, side="left") if n else np.zeros(blocks - 1, dtype=np.int64)
    return np.concatenate(([0], starts, [n])).astype(np.int64)


def window_length(distances: np.ndarray, buffer_cost: float, far_cost: float) -> int:
    """argmin over L of buffer_cost*L + far_cost*#(distances > L), L in {0} + distances."""
    if distances.size == 0:
        return 0
    d = np.sort(distances)
    m = d.size
    last = np.flatnonzero(np.append(d[1:] != d[:-1], True))  # last index of each distinct value
    cost = buffer_cost * d[last] + far_cost * (m - 1 - last)
    k = int(np.argmin(cost))
    return int(d[last[k]]) if cost[k] < far_cost * m else 0


def split_band(half: HalfMatrix, blocks: int, buffer_cost: float = 1.0, far_cost: float = 8.0) -> BandSplit:
    """Split `half` for `blocks` threads into inner / middle / outer parts."""
    n, rowptr, col = half.n, half.rowptr, half.columns()
    row_start = row_blocks(rowptr, blocks)
    entry_row = np.repeat(np.arange(n, dtype=np.int64), np.diff(rowptr))
    row_block = np.searchsorted(row_start, np.arange(n), side="right") - 1
    entry_block = row_block[entry_row]
    entry_first_row = row_start[entry_block]
    before = np.flatnonzero(col < entry_first_row)  # middle or outer: j before the block
    b_row, b_block = entry_row[before], entry_block[before]
    b_dist = entry_first_row[before] - col[before]
    assert np.all(b_dist >= 1)

    win_len = np.zeros(blocks, dtype=np.int64)
    order = np.argsort(b_block, kind="stable")
    cuts = np.searchsorted(b_block[order], np.arange(blocks + 1))
    for t in range(blocks):
        win_len[t] = window_length(b_dist[order[cuts[t] : cuts[t + 1]]], buffer_cost, far_cost)
    win_start = row_start[:-1] - win_len
    assert np.all(win_start >= 0)
    outer = col[before] < win_start[b_block]

    head_last = np.full(blocks, -1, dtype=np.int64)
    np.maximum.at(head_last, b_block, b_row)
    head = np.where(head_last >= 0, head_last - row_start[:-1] + 1, 0)
    head_off = np.concatenate(([0], np.cumsum(head))).astype(np.int64)
    head_rows = np.repeat(row_start[:-1] - head_off[:-1], head) + np.arange(head_off[-1])
    before_count = np.bincount(b_row, minlength=n)
    outer_count = np.bincount(b_row[outer], minlength=n)
    # columns ascend in a row: outer entries first, then middle, then inner
    mid_start = rowptr[head_rows] + outer_count[head_rows]
    inner_start = rowptr[head_rows] + before_count[head_rows]

    far = before[outer]
    far_target = col[far]
    far_owner = np.searchsorted(row_start, far_target, side="right") - 1
    far_order = np.lexsort((far_target, far_owner))
    far_off = np.concatenate(([0], np.cumsum(np.bincount(far_owner, minlength=blocks)))).astype(np.int64)
    return BandSplit(
        row_start=row_start,
        win_start=win_start.astype(np.int64),
        buf_off=np.concatenate(([0], np.cumsum(win_len))).astype(np.int64),
        head_off=head_off,
        mid_start=mid_start.astype(np.int64),
        inner_start=inner_start.astype(np.int64),
        far_off=far_off,
        far_target=np.ascontiguousarray(far_target[far_order], dtype=np.int32),
        far_source=np.ascontiguousarray(entry_row[far][far_order], dtype=np.int32),
        far_val=np.ascontiguousarray(half.values()[far][far_order], dtype=np.float64),
    )
