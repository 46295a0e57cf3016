from scoring.sync import sync_score


def test_equal_digests_are_in_sync():
    assert sync_score("abc", "abc") == 1.0


def test_different_missing_or_empty_digests_are_not():
    assert sync_score("abc", "abd") == 0.0
    assert sync_score(None, "abc") == 0.0
    assert sync_score("", "") == 0.0
