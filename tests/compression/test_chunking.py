import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compression.chunking import chunk_layout, largest_divisor_at_most, split_side

TARGET = 64 / 4096


@pytest.mark.parametrize(("n", "limit", "want"), [(4096, 64, 64), (100, 64, 50), (97, 64, 1), (30, 64, 30), (1, 64, 1)])
def test_largest_divisor(n, limit, want):
    assert largest_divisor_at_most(n, limit) == want


@pytest.mark.parametrize(("n", "limit", "want"), [(4096, 64, (64, 64)), (199, 64, (4, 50)), (65, 64, (2, 33)), (7, 64, (1, 7))])
def test_split_side_takes_the_fewest_equal_tiles(n, limit, want):
    assert split_side(n, limit) == want


def test_square_matrix_gets_64x64_tiles_and_64_kept():
    lay = chunk_layout((4096, 256))
    assert (lay.tile_rows, lay.tile_cols, lay.chunk_elems, lay.k, lay.extra) == (64, 64, 4096, 64, 0)
    assert lay.n_chunks == 64 * 4 and not lay.padded
    assert lay.n_kept == lay.n_chunks * 64


@pytest.mark.parametrize(("shape", "tiles"), [((199, 199), (50, 67)), ((2048, 199), (64, 50)), ((100, 300), (50, 75))])
def test_odd_sides_get_large_tiles_and_the_configured_density(shape, tiles):
    lay = chunk_layout(shape)
    assert (lay.tile_rows, lay.tile_cols) == tiles
    # Kept = round(numel * 64 / 4096), spread over the chunks within one of each other.
    assert lay.n_kept == round(math.prod(shape) * TARGET)
    assert set(lay.chunk_ks().tolist()) <= {lay.k, lay.k + 1}


def test_a_prime_side_is_padded_by_at_most_one_row_per_tile():
    lay = chunk_layout((2048, 199))
    assert (lay.tiles_across, lay.pad_cols, lay.pad_rows) == (4, 1, 0)
    row0, col0, nrows, ncols = lay.chunk_extent()
    assert sorted(set(ncols.tolist())) == [49, 50] and set(nrows.tolist()) == {64}
    assert col0[:4].tolist() == [0, 50, 100, 150]  # the short tile is the last, ending at column 199


def test_vectors_and_higher_rank():
    vec = chunk_layout((512,))
    assert (vec.rows, vec.cols, vec.chunk_elems, vec.k) == (1, 512, 512, 8)
    conv = chunk_layout((8, 4, 3, 3))
    assert (conv.rows, conv.cols) == (8, 36)
    assert chunk_layout((7,)).k == 1  # never zero kept
    bias = chunk_layout((4099,))  # prime length: two chunks of 2050 (one padded), not 4099 of one
    assert (bias.n_chunks, bias.chunk_elems, bias.n_kept) == (2, 2050, 64)
    column = chunk_layout((199, 1))  # narrow matrices get tall tiles, not 50 x 1
    assert (column.tile_rows, column.tile_cols, column.n_kept) == (199, 1, 3)


def test_density_parameter_and_cap():
    assert chunk_layout((64, 64), topk_per_chunk=128).k == 128
    assert chunk_layout((8, 8), topk_per_chunk=4096).k == 64  # at most everything
    dense = chunk_layout((199, 199), topk_per_chunk=4096)  # at most what the smallest tile holds
    assert dense.k == 49 * 66 and dense.extra == 0


def test_empty_tensor_is_refused():
    with pytest.raises(ValueError):
        chunk_layout((0, 5))


_SIDE = st.integers(1, 700) | st.sampled_from([64, 127, 128, 199, 257, 4099])


@settings(max_examples=200, deadline=None)
@given(st.lists(_SIDE, min_size=1, max_size=2))
def test_density_is_the_configured_ratio_for_any_shape(shape):
    lay = chunk_layout(tuple(shape))
    numel = math.prod(shape)
    want = numel * TARGET
    # Within 1 % wherever a whole value per 1 % is representable, otherwise within rounding,
    # except for the floor of one kept value per chunk.
    if want >= 50:
        assert abs(lay.n_kept / want - 1) <= 0.01
    else:
        assert lay.n_kept <= max(round(want), lay.n_chunks)
    assert lay.n_kept <= numel
    # Tiles are at most 4096 elements and never mostly padding.
    _, _, nrows, ncols = lay.chunk_extent()
    assert lay.chunk_elems <= 4096 or lay.tile_rows == 1 and lay.tile_cols <= 4096
    assert int((nrows * ncols).sum()) == numel
    assert int((nrows * ncols).min()) >= lay.k + (lay.extra > 0)


@pytest.mark.parametrize("shape", [(128, 192), (100, 300), (640,), (6, 5, 4), (199, 199), (2048, 199), (4099,), (67, 3)])
def test_local_to_flat_matches_tile_copy(shape):
    lay = chunk_layout(shape)
    t = torch.randn(shape)
    chunks = lay.to_chunks(t)
    _, _, nrows, ncols = lay.chunk_extent()
    # Real slots of every chunk map one to one onto the tensor; padded slots hold zero.
    local = torch.arange(lay.chunk_elems).expand(lay.n_chunks, -1)
    real = (local // lay.tile_cols < nrows.unsqueeze(1)) & (local % lay.tile_cols < ncols.unsqueeze(1))
    flat = lay.local_to_flat(local).view(lay.n_chunks, -1)[real]
    assert torch.equal(flat.sort().values, torch.arange(lay.numel))
    assert torch.equal(t.reshape(-1)[flat], chunks[real])
    assert bool((chunks[~real] == 0).all())
    mags = lay.to_chunks(t, absolute=True)
    assert torch.equal(mags[real], chunks[real].abs())
    # Padded slots are -0.0: below every magnitude when ranked by their int32 bit patterns.
    assert bool((mags[~real].view(torch.int32) == torch.iinfo(torch.int32).min).all())
