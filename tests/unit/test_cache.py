"""The cache's keyed entries (`toolkit.io.cache.keyed_entry`)."""


def test_an_entry_under_an_earlier_key_spelling_is_renamed_not_redone(tmp_path):
    """A cache entry written under the key an earlier version spelled (`torch.float32`) is found under
    the new key, every file of it, and a key that was never written finds nothing."""
    from lexprobe.toolkit.io.cache import keyed_entry

    old = {"dtype": "torch.float32", "n": 1}
    written = keyed_entry(tmp_path, old)
    written.write_text("{}")
    written.with_suffix(".csv").write_text("a\n1\n")
    new = keyed_entry(tmp_path, {"dtype": "float32", "n": 1}, legacy=old)
    assert new != written and new.exists() and new.with_suffix(".csv").read_text() == "a\n1\n"
    assert not written.exists() and not written.with_suffix(".csv").exists()
    assert not keyed_entry(
        tmp_path, {"dtype": "float32", "n": 2}, legacy={"dtype": "torch.float32", "n": 2}
    ).exists()
