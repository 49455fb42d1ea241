import threading

import pytest

import vramobs
from vramobs import InvalidArgumentError, stats, tags


def test_untagged_is_tag_zero():
    assert tags.tag_id(None) == 0
    assert tags.declare("untagged") == 0
    assert tags.tag_name(0) == "untagged"
    assert tags.declared()[0] == "untagged"


def test_declare_is_idempotent_and_names_round_trip():
    first = tags.declare("activations")
    assert first > 0
    assert tags.declare("activations") == first == tags.tag_id("activations")
    assert tags.tag_name(first) == "activations"
    assert tags.declared().count("activations") == 1


def test_unknown_ids_get_a_placeholder_name():
    assert tags.tag_name(63) == "tag_63"
    assert tags.tag_name(-1) == "tag_-1"


def test_longest_valid_tag_is_accepted():
    name = "t0123456789_abcdefghijklmnopqrst"
    assert len(name) == 32
    with vramobs.alloc(64, tag=name) as buf:
        assert buf.tag == name
        assert stats.registry_stats().by_tag[name] == (1, 64)
        assert [a.tag for a in stats.live_allocations() if a.address == buf.ptr] == [name]


@pytest.mark.parametrize(
    "name", ["Weights", "1st", "", "kv-cache", "_x", "a" * 33, "weights ", "wéights", b"weights", 7]
)
def test_invalid_names_are_refused(name):
    before = tags.declared()
    with pytest.raises(InvalidArgumentError) as info:
        tags.declare(name)
    assert info.value.reason == "invalid_tag" and info.value.code == 2
    assert tags.declared() == before


def test_unhashable_name_is_refused_as_invalid_argument():
    with pytest.raises(InvalidArgumentError):
        tags.declare(["weights"])


def test_concurrent_declarations_agree():
    ids = []
    barrier = threading.Barrier(16)

    def declare():
        barrier.wait()
        ids.append(tags.declare("concurrent_tag"))

    threads = [threading.Thread(target=declare) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 16 and len(set(ids)) == 1
    assert tags.declared().count("concurrent_tag") == 1


def test_at_most_63_tags(run_python):
    result = run_python(
        """
        from vramobs import tags, InvalidArgumentError
        ids = [tags.declare(f"tag{i}") for i in range(63)]
        assert ids == list(range(1, 64)), ids
        try:
            tags.declare("one_too_many")
        except InvalidArgumentError as exc:
            assert exc.reason == "invalid_tag"
            print(exc)
        assert tags.declare("tag62") == 63
        assert len(tags.declared()) == 64
        """
    )
    assert result.returncode == 0, result.stderr
    assert "at most 63 tags can be declared; 'one_too_many' is one too many" in result.stdout
