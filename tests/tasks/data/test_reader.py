"""Per-epoch assignment of shard samples to ranks and DataLoader workers."""

import pytest
from torch.utils.data import DataLoader

from tasks.data import shards
from tasks.data.plan import plan_epoch
from tasks.data.reader import ShardRef, ShardStream, segments


@pytest.fixture
def toy_shards(tmp_path):
    """Four shards of uneven size (7, 7, 7, 2 samples): 23 samples in all."""
    refs = []
    for spec in shards.plan("train", list(range(23)), 7):
        shards.write_tar(({"__key__": f"s{i:03d}", "cls": i} for i in spec.inputs), tmp_path / spec.name)
        refs.append(ShardRef(str(tmp_path / spec.name), len(spec.inputs)))
    return refs


def _decode(sample):
    return int(sample["cls"])


def _epoch(refs, world, workers, epoch, policy, shuffle=True):
    per_rank = []
    for rank in range(world):
        stream = ShardStream(refs, _decode, rank=rank, world_size=world, seed=7, shuffle=shuffle,
                             shuffle_buffer=4, policy=policy)
        stream.set_epoch(epoch)
        loader = DataLoader(stream, batch_size=None, num_workers=workers)
        per_rank.append([int(x) for x in loader])
        assert len(per_rank[-1]) == len(stream)
    return per_rank


def test_segments_wrap_around_for_padding():
    assert segments([3, 3], 0, 6) == [(0, 0, 3), (1, 0, 3)]
    assert segments([3, 3], 2, 8) == [(0, 2, 3), (1, 0, 3), (0, 0, 2)]


@pytest.mark.parametrize("policy, counts", [("pad", [8, 8, 8]), ("drop", [7, 7, 7]), ("exact", [7, 8, 8])])
def test_rank_ranges(policy, counts):
    assert [plan_epoch(23, 3, 2, policy).rank_samples(r) for r in range(3)] == counts


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_policy_sees_every_sample_once(toy_shards, workers):
    per_rank = _epoch(toy_shards, world=3, workers=workers, epoch=0, policy="exact")
    assert sorted(x for rank in per_rank for x in rank) == list(range(23))


def test_pad_policy_gives_equal_counts_and_covers_everything(toy_shards):
    per_rank = _epoch(toy_shards, world=2, workers=2, epoch=1, policy="pad")
    assert [len(r) for r in per_rank] == [12, 12]  # 23 padded to 24: no rank waits on another
    seen = [x for rank in per_rank for x in rank]
    assert set(seen) == set(range(23)) and len(seen) == 24


def test_order_is_deterministic_per_epoch_and_changes_between_epochs(toy_shards):
    assert _epoch(toy_shards, 2, 0, epoch=3, policy="pad") == _epoch(toy_shards, 2, 0, epoch=3, policy="pad")
    assert _epoch(toy_shards, 2, 0, epoch=3, policy="pad") != _epoch(toy_shards, 2, 0, epoch=4, policy="pad")


def test_unshuffled_stream_is_in_shard_order(toy_shards):
    assert _epoch(toy_shards, 1, 0, epoch=0, policy="exact", shuffle=False) == [list(range(23))]


def test_short_shard_is_reported(toy_shards):
    lying = [ShardRef(toy_shards[3].url, 5)]  # the manifest claims 5, the tar holds 2
    with pytest.raises(shards.ShardError, match="holds fewer samples than its manifest"):
        list(ShardStream(lying, _decode, shuffle=False))


def test_plain_webdataset_reads_s3_through_the_boto3_opener(toy_shards, s3_bucket):
    import webdataset as wds

    from tasks.data import storage
    from tasks.data.reader import register_s3_opener

    url = f"{s3_bucket}/toy/{toy_shards[0].url.rsplit('/', 1)[-1]}"
    storage.upload_file(toy_shards[0].url, url)
    register_s3_opener()
    dataset = wds.WebDataset(url, shardshuffle=False, nodesplitter=wds.split_by_node)
    assert [int(s["cls"]) for s in dataset] == list(range(7))
