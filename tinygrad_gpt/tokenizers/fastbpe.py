"""Numba kernels for byte-level BPE: incremental training and cached chunk encoding.

What it is: plain arrays in, plain arrays out (the tokenizer classes in `bpe.py` own the state).
- An open-addressing hash (`table_find` / `table_insert`) over int64 pair keys `(a << 32) | b`,
  linear probing at load factor <= 0.5 (the merge table is sized once; the trainer's pair table
  doubles and rehashes when half full).
- `train_merges`: BPE training with incremental pair counts. Symbols of the distinct chunks live in
  one flat array threaded by prev/next links; each pair keeps a list of the positions where it
  occurs, and a max-heap orders pairs by (count desc, left id asc, right id asc). A merge visits
  only the positions of its own pair, fixing the counts of the neighbouring pairs; stale heap and
  position entries are checked and dropped when they surface (lazy deletion). Cost per merge is
  proportional to the occurrences it merges, never to the corpus.
- `encode_chunks`: for each chunk, UTF-8 encode its code points, look the bytes up in a bounded
  cache (bytes -> ids; cleared when full), and on a miss apply merges by rank with a min-heap of
  (rank, position), i.e. always the lowest-ranked adjacent pair, leftmost on ties, which is the
  same result as GPT-2's "merge every occurrence of the best pair, left to right".

Follows: Sennrich et al. 2016 (BPE), the position-list trainer of Hugging Face `tokenizers`
(`bpe/trainer.rs`, where_to_update + BinaryHeap), tiktoken's `_byte_pair_merge` for encoding.
The readable references that these kernels are tested against live in `bpe.py`
(`train_merges_reference`, `bpe_reference`).

Deliberately does not: run in parallel (one thread, deterministic), free the position nodes of
merged pairs (memory stays linear: at most 3 nodes per input symbol), or cache chunks longer than
`CACHE_MAX_CHUNK` bytes.
"""
import numpy as np
from numba import njit

EMPTY = np.int64(-1)
CACHE_MAX_CHUNK = 256  # bytes; longer chunks are encoded every time and never cached
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, inline="always")
def _slot_of(key, mask):
    h = np.uint64(key) * _GOLDEN
    return np.int64(h >> np.uint64(29)) & mask


@njit(cache=True)
def table_find(keys, key):
    """Slot holding `key`, or -1."""
    mask = keys.shape[0] - 1
    s = _slot_of(key, mask)
    while True:
        k = keys[s]
        if k == key:
            return s
        if k == EMPTY:
            return -1
        s = (s + 1) & mask


@njit(cache=True)
def table_insert(keys, key):
    """Slot holding `key`, claiming an empty one if absent. The caller guarantees free space."""
    mask = keys.shape[0] - 1
    s = _slot_of(key, mask)
    while True:
        k = keys[s]
        if k == key:
            return s
        if k == EMPTY:
            keys[s] = key
            return s
        s = (s + 1) & mask


@njit(cache=True)
def build_merge_table(lefts, rights, news):
    """Hash of the merges: keys `(a << 32) | b`, with each pair's rank (its index) and new id."""
    n = lefts.shape[0]
    cap = 16
    while cap < 2 * n:
        cap *= 2
    keys = np.full(cap, EMPTY, dtype=np.int64)  # (cap,)
    ranks = np.full(cap, -1, dtype=np.int32)  # (cap,)
    new_ids = np.full(cap, -1, dtype=np.int32)  # (cap,)
    for r in range(n):
        s = table_insert(keys, (np.int64(lefts[r]) << 32) | np.int64(rights[r]))
        if ranks[s] < 0:  # subtle: a duplicated pair keeps its first (lowest) rank, as GPT-2's dict does not
            ranks[s] = r
            new_ids[s] = news[r]
    return keys, ranks, new_ids


# ----------------------------------------------------------------------------------------------
# Training


@njit(cache=True)
def _heap_better(cnt_a, key_a, cnt_b, key_b):
    """True when heap entry a comes out before b: higher count, then smaller key = (left, right)."""
    if cnt_a != cnt_b:
        return cnt_a > cnt_b
    return key_a < key_b


@njit(cache=True)
def _heap_push(h_cnt, h_key, size, cnt, key):
    """Pushes (cnt, key) at index `size` (the caller made room); returns the new size."""
    i = size
    h_cnt[i] = cnt
    h_key[i] = key
    while i > 0:
        parent = (i - 1) >> 1
        if _heap_better(h_cnt[i], h_key[i], h_cnt[parent], h_key[parent]):
            h_cnt[i], h_cnt[parent] = h_cnt[parent], h_cnt[i]
            h_key[i], h_key[parent] = h_key[parent], h_key[i]
            i = parent
        else:
            break
    return size + 1


@njit(cache=True)
def _heap_pop(h_cnt, h_key, size):
    """Removes the top entry (left at index `size - 1`); returns the new size."""
    size -= 1
    h_cnt[0], h_cnt[size] = h_cnt[size], h_cnt[0]
    h_key[0], h_key[size] = h_key[size], h_key[0]
    i = 0
    while True:
        left = 2 * i + 1
        if left >= size:
            break
        best = left
        right = left + 1
        if right < size and _heap_better(h_cnt[right], h_key[right], h_cnt[left], h_key[left]):
            best = right
        if _heap_better(h_cnt[best], h_key[best], h_cnt[i], h_key[i]):
            h_cnt[i], h_cnt[best] = h_cnt[best], h_cnt[i]
            h_key[i], h_key[best] = h_key[best], h_key[i]
            i = best
        else:
            break
    return size


@njit(cache=True)
def _grown(arr, size):
    """`arr` copied into a new array of `size` entries (the tail uninitialised)."""
    out = np.empty(size, dtype=arr.dtype)
    out[:arr.shape[0]] = arr
    return out


@njit(cache=True)
def _rehash(keys, count, head, tail, stamp):
    """The pair table at twice the capacity (slot numbers change; keys do not)."""
    cap = 2 * keys.shape[0]
    new_keys = np.full(cap, EMPTY, dtype=np.int64)
    new_count = np.zeros(cap, dtype=np.int64)
    new_head = np.full(cap, -1, dtype=np.int64)
    new_tail = np.full(cap, -1, dtype=np.int64)
    new_stamp = np.full(cap, -1, dtype=np.int64)
    for s in range(keys.shape[0]):
        if keys[s] != EMPTY:
            t = table_insert(new_keys, keys[s])
            new_count[t] = count[s]
            new_head[t] = head[s]
            new_tail[t] = tail[s]
            new_stamp[t] = stamp[s]
    return new_keys, new_count, new_head, new_tail, new_stamp


@njit(cache=True)
def train_merges(sym, word_end, weight, first_new_id, n_merges):
    """Learn up to `n_merges` merges over distinct chunks; returns int64 (n_done, 2) pairs.

    sym: int32 (N,) the byte-token ids of every distinct chunk, concatenated (modified in place);
    word_end: bool (N,) True at the last symbol of each chunk; weight: int64 (N,) the chunk's count
    at each of its positions. Merge m creates id `first_new_id + m`.

    A pair is known by its key (left << 32) | right, so ordering keys ascending is ordering pairs by
    (left, right): the heap holds (count, key) and never a slot number, which lets the pair table
    double and rehash whenever it is half full. Node and heap arrays double when full.
    """
    n = sym.shape[0]
    cap = 1024
    keys = np.full(cap, EMPTY, dtype=np.int64)  # (cap,) pair key per slot
    count = np.zeros(cap, dtype=np.int64)  # (cap,) weighted occurrences of the pair
    head = np.full(cap, -1, dtype=np.int64)  # (cap,) first position node of the pair
    tail = np.full(cap, -1, dtype=np.int64)  # (cap,) last position node (appending keeps order)
    stamp = np.full(cap, -1, dtype=np.int64)  # (cap,) the pass that last listed the pair in `touched`
    n_pairs = 0
    node_pos = np.empty(n + 16, dtype=np.int64)  # (nodes,) position of the pair's left symbol
    node_next = np.empty(n + 16, dtype=np.int64)  # (nodes,) next node of the same pair, -1 at the end
    n_nodes = 0
    nxt = np.empty(n, dtype=np.int64)  # (N,) next live symbol in the chunk, -1 at its end
    prv = np.empty(n, dtype=np.int64)  # (N,) previous live symbol, -1 at its start
    for i in range(n):
        nxt[i] = -1 if word_end[i] else i + 1
        prv[i] = -1 if (i == 0 or word_end[i - 1]) else i - 1

    h_cnt = np.empty(1024, dtype=np.int64)  # (heap,) stored count (may overestimate: lazy)
    h_key = np.empty(1024, dtype=np.int64)  # (heap,) pair key
    h_size = 0
    merges = np.empty((n_merges, 2), dtype=np.int64)  # (n_merges, 2)
    touched = np.empty(1024, dtype=np.int64)  # keys of the pairs one merge created
    n_done = 0
    # Pass -1 counts the pairs as they are; pass m >= 0 applies merge m. Both add pairs through
    # the same code below, so the initial lists are ascending within a chunk and so are later ones.
    best_key = np.int64(-1)
    a = np.int64(0)
    b = np.int64(0)
    new = np.int64(0)
    w = np.int64(0)
    pass_id = -1
    while n_done <= n_merges:
        n_touched = 0
        pass_id += 1
        if best_key < 0:
            # initial pass: every adjacent pair, left to right
            node = -1
            i = 0
        else:
            a = best_key >> 32
            b = best_key & 0xFFFFFFFF
            new = np.int64(first_new_id + n_done)
            merges[n_done, 0] = a
            merges[n_done, 1] = b
            s = table_find(keys, best_key)
            node = head[s]
            head[s] = -1
            tail[s] = -1
        while True:
            if best_key < 0:
                if i >= n:
                    break
                p = i
                i += 1
                if nxt[p] < 0:
                    continue
                adds = 1
            else:
                if node < 0:
                    break
                i = node_pos[node]
                node = node_next[node]
                # lazy check: the position may have been merged away or changed since it was listed
                if sym[i] != a:
                    continue
                j = nxt[i]
                if j < 0 or sym[j] != b:
                    continue
                w = weight[i]
                p = prv[i]
                q = nxt[j]
                count[table_find(keys, best_key)] -= w
                if p >= 0:
                    count[table_find(keys, (np.int64(sym[p]) << 32) | a)] -= w
                if q >= 0:
                    count[table_find(keys, (b << 32) | np.int64(sym[q]))] -= w
                sym[i] = new
                sym[j] = -1
                nxt[i] = q
                if q >= 0:
                    prv[q] = i
                adds = 2
            for side in range(adds):
                if best_key < 0:
                    pos = p
                    key = (np.int64(sym[p]) << 32) | np.int64(sym[nxt[p]])
                    w = weight[p]
                elif side == 0:
                    if p < 0:
                        continue
                    pos = p
                    key = (np.int64(sym[p]) << 32) | new
                else:
                    if q < 0:
                        continue
                    pos = i
                    key = (new << 32) | np.int64(sym[q])
                s = table_find(keys, key)
                if s < 0:
                    if 2 * (n_pairs + 1) > cap:
                        keys, count, head, tail, stamp = _rehash(keys, count, head, tail, stamp)
                        cap = keys.shape[0]
                    s = table_insert(keys, key)
                    n_pairs += 1
                count[s] += w
                if n_nodes == node_pos.shape[0]:
                    node_pos = _grown(node_pos, 2 * n_nodes)
                    node_next = _grown(node_next, 2 * n_nodes)
                node_pos[n_nodes] = pos
                node_next[n_nodes] = -1
                if tail[s] >= 0:
                    node_next[tail[s]] = n_nodes
                else:
                    head[s] = n_nodes
                tail[s] = n_nodes
                n_nodes += 1
                if stamp[s] != pass_id:
                    stamp[s] = pass_id
                    if n_touched == touched.shape[0]:
                        touched = _grown(touched, 2 * n_touched)
                    touched[n_touched] = key
                    n_touched += 1
        # push the pairs this pass created, with their final counts; pairs that already existed
        # only lost occurrences, so their heap entries overestimate and are fixed when they surface
        for t in range(n_touched):
            c = count[table_find(keys, touched[t])]
            if c > 0:
                if h_size == h_cnt.shape[0]:
                    h_cnt = _grown(h_cnt, 2 * h_size)
                    h_key = _grown(h_key, 2 * h_size)
                h_size = _heap_push(h_cnt, h_key, h_size, c, touched[t])
        if best_key >= 0:
            n_done += 1
        if n_done == n_merges:
            break
        best_key = -1
        while h_size > 0:
            c = h_cnt[0]
            key = h_key[0]
            h_size = _heap_pop(h_cnt, h_key, h_size)
            actual = count[table_find(keys, key)]
            if c == actual:
                best_key = key
                break
            if actual > 0:  # stale: re-push with the true count (the pop made room)
                h_size = _heap_push(h_cnt, h_key, h_size, actual, key)
        if best_key < 0:
            break  # no pair is left: every chunk is a single token
    return merges[:n_done]


@njit(cache=True)
def train_merges_naive(sym, word_end, weight, first_new_id, n_merges):
    """The baseline the benchmark compares against: recount every pair of the corpus per merge.

    Same inputs, outputs and tie-breaking as `train_merges`; compiled too, so the comparison
    measures the algorithm, not the language.
    """
    n = sym.shape[0]
    cap = 16
    while cap < 2 * n + 16:
        cap *= 2
    merges = np.empty((n_merges, 2), dtype=np.int64)
    cur = sym.copy()
    end = word_end.copy()
    wt = weight.copy()
    m = n
    n_done = 0
    keys = np.full(cap, EMPTY, dtype=np.int64)
    count = np.zeros(cap, dtype=np.int64)
    while n_done < n_merges:
        keys[:] = EMPTY
        count[:] = 0
        for i in range(m - 1):
            if not end[i]:
                s = table_insert(keys, (np.int64(cur[i]) << 32) | np.int64(cur[i + 1]))
                count[s] += wt[i]
        best = -1
        for s in range(cap):
            if keys[s] == EMPTY:
                continue
            if best < 0 or count[s] > count[best] or (count[s] == count[best] and keys[s] < keys[best]):
                best = s
        if best < 0:
            break
        a = keys[best] >> 32
        b = keys[best] & 0xFFFFFFFF
        new = first_new_id + n_done
        merges[n_done, 0] = a
        merges[n_done, 1] = b
        k = 0
        i = 0
        while i < m:
            if i + 1 < m and not end[i] and cur[i] == a and cur[i + 1] == b:
                cur[k] = new
                end[k] = end[i + 1]
                wt[k] = wt[i]
                i += 2
            else:
                cur[k] = cur[i]
                end[k] = end[i]
                wt[k] = wt[i]
                i += 1
            k += 1
        m = k
        n_done += 1
    return merges[:n_done]


# ----------------------------------------------------------------------------------------------
# Encoding


@njit(cache=True)
def _utf8(cp, out, k):
    """Writes the UTF-8 bytes of code point `cp` at out[k:]; returns the new k."""
    if cp < 0x80:
        out[k] = cp
        return k + 1
    if cp < 0x800:
        out[k] = 0xC0 | (cp >> 6)
        out[k + 1] = 0x80 | (cp & 0x3F)
        return k + 2
    if cp < 0x10000:
        out[k] = 0xE0 | (cp >> 12)
        out[k + 1] = 0x80 | ((cp >> 6) & 0x3F)
        out[k + 2] = 0x80 | (cp & 0x3F)
        return k + 3
    out[k] = 0xF0 | (cp >> 18)
    out[k + 1] = 0x80 | ((cp >> 12) & 0x3F)
    out[k + 2] = 0x80 | ((cp >> 6) & 0x3F)
    out[k + 3] = 0x80 | (cp & 0x3F)
    return k + 4


@njit(cache=True)
def _rank_of(mkeys, mranks, a, b):
    s = table_find(mkeys, (np.int64(a) << 32) | np.int64(b))
    if s < 0:
        return -1, s
    return mranks[s], s


@njit(cache=True)
def _sift_down_i64(heap, i, size):
    """Moves heap[i] down a min-heap of int64 entries heap[:size] until both children are larger."""
    while True:
        left = 2 * i + 1
        if left >= size:
            return
        best = left
        if left + 1 < size and heap[left + 1] < heap[left]:
            best = left + 1
        if heap[best] < heap[i]:
            heap[i], heap[best] = heap[best], heap[i]
            i = best
        else:
            return


@njit(cache=True)
def bpe_chunk(buf, n, byte_ids, mkeys, mranks, mnew, sym, nxt, prv, heap, out, k):
    """Merges the bytes buf[:n] by rank; writes the ids at out[k:] and returns the new k.

    Work arrays sym/nxt/prv hold n entries, heap 3n. Heap entries are (rank << 32) | position, so
    the smallest is the lowest rank, leftmost on ties; stale entries are skipped when popped.
    """
    for i in range(n):
        sym[i] = byte_ids[buf[i]]
        nxt[i] = i + 1 if i + 1 < n else -1
        prv[i] = i - 1
    size = 0
    for i in range(n - 1):
        r, s = _rank_of(mkeys, mranks, sym[i], sym[i + 1])
        if r >= 0:
            heap[size] = (np.int64(r) << 32) | i
            size += 1
    # heapify (min-heap)
    for start in range((size - 2) // 2, -1, -1):
        _sift_down_i64(heap, start, size)
    while size > 0:
        top = heap[0]
        size -= 1
        heap[0] = heap[size]
        _sift_down_i64(heap, 0, size)
        r = top >> 32
        i = top & 0xFFFFFFFF
        if sym[i] < 0:
            continue
        j = nxt[i]
        if j < 0:
            continue
        rr, s = _rank_of(mkeys, mranks, sym[i], sym[j])
        if rr != r:
            continue  # stale: the pair at i changed since this entry was pushed
        new = mnew[s]
        sym[i] = new
        sym[j] = -1
        q = nxt[j]
        nxt[i] = q
        if q >= 0:
            prv[q] = i
        for side in range(2):
            if side == 0:
                p = prv[i]
                if p < 0:
                    continue
                r2, s2 = _rank_of(mkeys, mranks, sym[p], new)
                pos = p
            else:
                if q < 0:
                    continue
                r2, s2 = _rank_of(mkeys, mranks, new, sym[q])
                pos = i
            if r2 < 0:
                continue
            # push
            c = size
            heap[c] = (np.int64(r2) << 32) | pos
            size += 1
            while c > 0:
                parent = (c - 1) >> 1
                if heap[c] < heap[parent]:
                    heap[c], heap[parent] = heap[parent], heap[c]
                    c = parent
                else:
                    break
    i = 0
    while i >= 0 and n > 0:
        out[k] = sym[i]
        k += 1
        i = nxt[i]
    return k


@njit(cache=True)
def _fnv1a(buf, n):
    h = np.uint64(0xCBF29CE484222325)
    for i in range(n):
        h = (h ^ np.uint64(buf[i])) * np.uint64(0x100000001B3)
    return np.int64(h >> np.uint64(1))  # non-negative, so -1 can mean empty


@njit(cache=True)
def encode_chunks(cps, starts, ends, byte_ids, mkeys, mranks, mnew,
                  c_hash, c_entry, e_info, b_store, t_store, state):
    """Token ids (int32) of the chunks cps[starts[c]:ends[c]], in order.

    Cache (all arrays owned by the caller, persistent across calls): c_hash/c_entry (cap,) the
    open-addressing table (hash of the chunk bytes -> entry, -1 empty); e_info (cap // 2, 4) per
    entry (byte offset, byte length, id offset, id count) into b_store (uint8) / t_store (int32);
    state int64[4] = (entries, bytes used, ids used, hits). When any part is full it is cleared.
    """
    n_chunks = starts.shape[0]
    max_len = 0
    total = 0
    for c in range(n_chunks):
        length = ends[c] - starts[c]
        if length > max_len:
            max_len = length
        total += length
    max_bytes = 4 * max_len + 4
    out = np.empty(4 * total + 4, dtype=np.int32)  # at most one id per byte
    buf = np.empty(max_bytes, dtype=np.uint8)
    sym = np.empty(max_bytes, dtype=np.int64)
    nxt = np.empty(max_bytes, dtype=np.int64)
    prv = np.empty(max_bytes, dtype=np.int64)
    heap = np.empty(3 * max_bytes, dtype=np.int64)
    mask = c_hash.shape[0] - 1
    e_cap = e_info.shape[0]
    k = 0
    for c in range(n_chunks):
        nb = 0
        for t in range(starts[c], ends[c]):
            nb = _utf8(cps[t], buf, nb)
        if nb > CACHE_MAX_CHUNK:
            k = bpe_chunk(buf, nb, byte_ids, mkeys, mranks, mnew, sym, nxt, prv, heap, out, k)
            continue
        h = _fnv1a(buf, nb)
        s = np.int64(np.uint64(h) * _GOLDEN >> np.uint64(29)) & mask
        hit = False
        while c_entry[s] >= 0:
            if c_hash[s] == h:
                e = c_entry[s]
                if e_info[e, 1] == nb:
                    off = e_info[e, 0]
                    same = True
                    for t in range(nb):
                        if b_store[off + t] != buf[t]:
                            same = False
                            break
                    if same:
                        toff = e_info[e, 2]
                        for t in range(e_info[e, 3]):
                            out[k] = t_store[toff + t]
                            k += 1
                        hit = True
                        break
            s = (s + 1) & mask
        if hit:
            state[3] += 1
            continue
        k0 = k
        k = bpe_chunk(buf, nb, byte_ids, mkeys, mranks, mnew, sym, nxt, prv, heap, out, k)
        n_ids = k - k0
        if state[0] + 1 > e_cap or state[1] + nb > b_store.shape[0] or state[2] + n_ids > t_store.shape[0]:
            c_entry[:] = -1  # full: start over rather than stop caching
            state[0] = 0
            state[1] = 0
            state[2] = 0
            s = np.int64(np.uint64(h) * _GOLDEN >> np.uint64(29)) & mask
            while c_entry[s] >= 0:
                s = (s + 1) & mask
        e = state[0]
        e_info[e, 0] = state[1]
        e_info[e, 1] = nb
        e_info[e, 2] = state[2]
        e_info[e, 3] = n_ids
        b_store[state[1]:state[1] + nb] = buf[:nb]
        t_store[state[2]:state[2] + n_ids] = out[k0:k]
        c_hash[s] = h
        c_entry[s] = e
        state[0] += 1
        state[1] += nb
        state[2] += n_ids
    return out[:k]


class ChunkCache:
    """The arrays of `encode_chunks`' cache: `entries` chunks of up to `byte_budget` bytes in all."""

    def __init__(self, entries=1 << 16, byte_budget=1 << 22):
        self.c_hash = np.full(2 * entries, -1, dtype=np.int64)  # (2E,)
        self.c_entry = np.full(2 * entries, -1, dtype=np.int64)  # (2E,)
        self.e_info = np.zeros((entries, 4), dtype=np.int64)  # (E, 4)
        self.b_store = np.zeros(byte_budget, dtype=np.uint8)  # (bytes,)
        self.t_store = np.zeros(byte_budget, dtype=np.int32)  # (ids,) never more ids than bytes
        self.state = np.zeros(4, dtype=np.int64)  # entries, bytes used, ids used, hits

    def clear(self):
        self.c_entry[:] = -1
        self.state[:] = 0

    def arrays(self):
        return self.c_hash, self.c_entry, self.e_info, self.b_store, self.t_store, self.state
