"""BatchOrder: numbered batches back in their publisher's order (no Ray)."""

from __future__ import annotations

import random

from control_plane.core.ordering import BatchOrder


def test_batches_in_order_pass_at_once():
    order: BatchOrder[str] = BatchOrder()
    assert order.admit("p", 0, "a", 0.0) == ["a"]
    assert order.admit("p", 1, "b", 0.0) == ["b"]
    assert len(order) == 0


def test_an_early_batch_waits_for_the_one_before_it():
    order: BatchOrder[str] = BatchOrder()
    assert order.admit("p", 1, "b", 0.0) == []
    assert order.admit("p", 2, "c", 0.0) == []
    assert len(order) == 2
    assert order.admit("p", 0, "a", 0.0) == ["a", "b", "c"]
    assert len(order) == 0


def test_publishers_are_ordered_independently():
    order: BatchOrder[str] = BatchOrder()
    assert order.admit("p", 1, "p1", 0.0) == []
    assert order.admit("q", 0, "q0", 0.0) == ["q0"]
    assert order.admit("p", 0, "p0", 0.0) == ["p0", "p1"]


def test_any_arrival_order_comes_out_in_number_order():
    rng = random.Random(7)
    numbers = list(range(200))
    rng.shuffle(numbers)
    order: BatchOrder[int] = BatchOrder()
    out: list[int] = []
    for n in numbers:
        out += order.admit("p", n, n, 0.0)
    assert out == list(range(200))


def test_a_batch_that_never_comes_is_given_up_after_the_gap_wait():
    order: BatchOrder[str] = BatchOrder(gap_wait=1.0)
    order.admit("p", 0, "a", 0.0)
    assert order.admit("p", 2, "c", 10.0) == []
    assert order.admit("p", 3, "d", 10.5) == []
    assert order.overdue(10.9) == []
    assert order.overdue(11.1) == ["c", "d"]
    assert order.admit("p", 4, "e", 11.2) == ["e"]
    # the lost one, if it turns up after all, is appended rather than dropped
    assert order.admit("p", 1, "b", 11.3) == ["b"]


def test_idle_publishers_are_forgotten():
    order: BatchOrder[str] = BatchOrder(forget_after=5.0)
    order.admit("p", 0, "a", 0.0)
    order.overdue(3.0)
    assert order.admit("p", 1, "b", 3.0) == ["b"]
    order.overdue(9.0)
    # forgotten: a new life of the publisher starts from 0 again
    assert order.admit("p", 0, "again", 9.0) == ["again"]


def test_a_restored_publisher_goes_on_from_its_next_number_and_earlier_ones_are_duplicates():
    order: BatchOrder[str] = BatchOrder()
    order.restore("p", 5, 0.0)  # batches 0..4 were written before the hub restarted
    assert order.duplicate("p", 4) and order.duplicate("p", 0)
    assert not order.duplicate("p", 5) and not order.duplicate("q", 0)
    assert order.admit("p", 6, "g", 0.0) == []  # sent again in another order
    assert order.admit("p", 5, "f", 0.0) == ["f", "g"]
    assert order.expected("p") == 7


def test_a_number_given_up_on_is_appended_once_when_it_comes_late():
    order: BatchOrder[str] = BatchOrder(gap_wait=1.0)
    order.admit("p", 0, "a", 0.0)
    order.admit("p", 2, "c", 0.0)
    assert order.overdue(2.0) == ["c"]
    assert not order.duplicate("p", 1)  # given up on, not appended: it may still come
    assert order.admit("p", 1, "b", 2.1) == ["b"]
    assert order.duplicate("p", 1)  # and only once


def test_a_rewound_publisher_expects_the_refused_number_again():
    order: BatchOrder[str] = BatchOrder()
    assert order.admit("p", 0, "a", 0.0) == ["a"]
    assert order.admit("p", 1, "b", 0.0) == ["b"]
    order.rewind("p", 1)  # "b" could not be written
    assert not order.duplicate("p", 1)
    assert order.admit("p", 1, "b", 0.0) == ["b"]
