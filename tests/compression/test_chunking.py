import pytest
import torch

from compression.chunking import chunk_layout, largest_divisor_at_most


@pytest.mark.parametrize(("n", "limit", "want"), [(4096, 64, 64), (100, 64, 50), (97, 64, 1), (30, 64, 30), (1, 64, 1)])
def test_largest_divisor(n, limit, want):
    assert largest_divisor_at_most(n, limit) == want


def test_square_matrix_gets_64x64_tiles_and_64_kept():
    lay = chunk_layout((4096, 256))
    assert (lay.tile_rows, lay.tile_cols, lay.chunk_elems, lay.k) == (64, 64, 4096, 64)
    assert lay.n_chunks == 64 * 4
    assert lay.n_kept == lay.n_chunks * 64


def test_odd_matrix_keeps_the_same_density():
    lay = chunk_layout((100, 300))
    assert (lay.tile_rows, lay.tile_cols) == (50, 60)
    assert lay.k == round(64 * 3000 / 4096)


def test_vectors_and_higher_rank():
    vec = chunk_layout((512,))
    assert (vec.rows, vec.cols, vec.chunk_elems, vec.k) == (1, 512, 512, 8)
    conv = chunk_layout((8, 4, 3, 3))
    assert (conv.rows, conv.cols) == (8, 36)
    assert chunk_layout((7,)).k == 1  # never zero kept


def test_density_parameter_and_cap():
    assert chunk_layout((64, 64), topk_per_chunk=128).k == 128
    assert chunk_layout((8, 8), topk_per_chunk=4096).k == 64  # at most everything


def test_empty_tensor_is_refused():
    with pytest.raises(ValueError):
        chunk_layout((0, 5))


@pytest.mark.parametrize("shape", [(128, 192), (100, 300), (640,), (6, 5, 4)])
def test_local_to_flat_matches_tile_copy(shape):
    lay = chunk_layout(shape)
    t = torch.randn(shape)
    chunks = lay.to_chunks(t)
    local = torch.randint(0, lay.chunk_elems, (lay.n_chunks, 3))
    flat = lay.local_to_flat(local)
    assert torch.equal(t.reshape(-1)[flat], torch.gather(chunks, 1, local).reshape(-1))
    assert torch.equal(lay.to_chunks(t, absolute=True), chunks.abs())
    # Every position of the tensor belongs to exactly one chunk slot.
    everything = lay.local_to_flat(torch.arange(lay.chunk_elems).expand(lay.n_chunks, -1))
    assert torch.equal(everything.sort().values, torch.arange(lay.numel))
