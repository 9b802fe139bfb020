"""The local stack's pure helpers."""

from streamrec.deploy.localstack import new_cluster_id


def test_cluster_ids_never_start_with_a_dash_which_the_storage_tool_would_read_as_an_option():
    ids = [new_cluster_id() for _ in range(5000)]  # about 78 of 5,000 would start with "-" by chance
    assert not any(i.startswith("-") for i in ids)
    assert all(len(i) == 22 for i in ids) and len(set(ids)) == len(ids)
