"""The room state machine: seats, the room clock, events, limits and errors."""

from __future__ import annotations

import pytest

from earshot.rooms.errors import RoomError
from earshot.rooms.room import (
    Room,
    RoomEvent,
    RoomLimits,
    Rooms,
    check_participant,
    check_room_name,
)

T0 = 1000.0  # any origin: the room clock starts at the first join


def kinds(events: list[RoomEvent]) -> list[tuple[str, str | None, float]]:
    return [(e.type, e.participant, round(e.t, 6)) for e in events]


def test_three_participants_share_one_clock():
    room = Room("standup", now=T0)
    ev = room.join("ann", stream="s-ann", rate=48000, now=T0)
    ev += room.join("bob", stream="s-bob", rate=16000, offset=32000, now=T0 + 1.5)
    ev += room.join("cy", stream="s-cy", rate=48000, now=T0 + 2.0)
    assert kinds(ev) == [("joined", "ann", 0.0), ("joined", "bob", 1.5), ("joined", "cy", 2.0)]
    assert ev[1].to_dict() == {"type": "joined", "room": "standup", "t": 1.5,
                               "participant": "bob", "stream": "s-bob"}
    # bob's stream was 2 s old when he joined; his VAD says speech at 2.5 s of it (room 2.0)
    # and cy's at 0.25 s of hers (room 2.25): one timeline, not their arrival order
    late = room.speech("cy", "speech_start", 0.25, now=T0 + 3.0)
    early = room.speech("bob", "speech_start", 2.5, now=T0 + 3.1)
    assert kinds(late + early) == [("speaking", "cy", 2.25), ("speaking", "bob", 2.0)]
    assert room.seat("bob").room_time(2.5) == 2.0
    assert room.seat("bob").stream_time(2.0) == 2.5
    assert room.speech("bob", "speech_start", 2.6, now=T0 + 3.2) == []  # already speaking
    assert kinds(room.speech("bob", "speech_end", 3.5, now=T0 + 4.0)) == [("silent", "bob", 3.0)]
    assert room.speech("bob", "speech_end", 3.6, now=T0 + 4.1) == []
    assert [s.participant for s in room] == ["ann", "bob", "cy"] and len(room) == 3
    snap = room.snapshot(T0 + 5)
    assert snap["t"] == 5.0 and snap["participants"][1] == {
        "participant": "bob", "stream": "s-bob", "rate": 16000, "joined_at": 1.5,
        "offset": 32000, "muted": False, "speaking": False, "connected": True}


def test_leaving_and_the_empty_room_ending_after_its_grace():
    room = Room("r1", now=T0, limits=RoomLimits(grace=30))
    room.join("ann", stream="a", rate=48000, now=T0)
    room.join("bob", stream="b", rate=48000, now=T0 + 1)
    room.speech("bob", "speech_start", 0.5, now=T0 + 2)
    ev = room.leave("bob", now=T0 + 3)
    assert kinds(ev) == [("silent", "bob", 3.0), ("left", "bob", 3.0)]
    assert ev[1].reason == "left"
    ev = room.leave("ann", now=T0 + 4)
    assert kinds(ev) == [("left", "ann", 4.0)]
    assert room.tick(T0 + 33.9) == [] and not room.ended
    ev = room.tick(T0 + 40)
    assert kinds(ev) == [("ended", None, 34.0)] and room.ended
    with pytest.raises(RoomError) as err:
        room.join("cy", stream="c", rate=48000, now=T0 + 41)
    assert err.value.code == "room_ended"
    assert room.tick(T0 + 50) == []


def test_someone_joining_during_the_grace_keeps_the_room():
    room = Room("r1", now=T0, limits=RoomLimits(grace=10))
    room.join("ann", stream="a", rate=48000, now=T0)
    room.leave("ann", now=T0 + 1)
    room.join("bob", stream="b", rate=48000, now=T0 + 8)
    assert room.tick(T0 + 30) == [] and not room.ended


def test_a_dropped_participant_resumes_its_seat_or_is_lost():
    room = Room("r1", now=T0, limits=RoomLimits(seat_grace=10, grace=5))
    room.join("ann", stream="a", rate=48000, key="secret-a", now=T0)
    room.join("bob", stream="b", rate=48000, key="secret-b", now=T0 + 1)
    assert room.disconnect("ann", now=T0 + 2) == []
    assert not room.seat("ann").connected
    # someone else cannot take the name, nor can ann without her key or on another stream
    for stream, key in (("a", None), ("a", "guess"), ("a2", "secret-a")):
        with pytest.raises(RoomError) as err:
            room.join("ann", stream=stream, rate=48000, key=key, now=T0 + 3)
        assert err.value.code == "name_taken"
    assert room.join("ann", stream="a", rate=48000, key="secret-a", now=T0 + 4) == []
    assert room.seat("ann").connected and room.seat("ann").joined_at == 0.0  # same mapping
    room.speech("bob", "speech_start", 1.0, now=T0 + 5)
    room.disconnect("bob", now=T0 + 6)
    assert room.tick(T0 + 15.9) == []
    ev = room.tick(T0 + 17)
    assert kinds(ev) == [("silent", "bob", 16.0), ("left", "bob", 16.0)]
    assert ev[1].reason == "lost" and "bob" not in room
    # a seated participant joining again (a second tab) is the same as a resume
    assert room.join("ann", stream="a", rate=48000, key="secret-a", now=T0 + 18) == []


def test_mute_and_unmute():
    room = Room("r1", now=T0)
    room.join("ann", stream="a", rate=48000, now=T0)
    room.speech("ann", "speech_start", 0.5, now=T0 + 1)
    ev = room.mute("ann", True, now=T0 + 2)
    assert kinds(ev) == [("silent", "ann", 2.0), ("muted", "ann", 2.0)]
    assert room.mute("ann", True, now=T0 + 2.5) == []
    assert room.speech("ann", "speech_start", 2.6, now=T0 + 3) == []  # muted: not speaking
    assert kinds(room.mute("ann", False, now=T0 + 4)) == [("unmuted", "ann", 4.0)]
    assert kinds(room.speech("ann", "speech_start", 4.5, now=T0 + 5)) == [
        ("speaking", "ann", 4.5)]


def test_room_full_and_one_stream_one_seat():
    room = Room("small", now=T0, limits=RoomLimits(max_seats=2))
    room.join("ann", stream="a", rate=48000, now=T0)
    room.join("bob", stream="b", rate=48000, now=T0)
    with pytest.raises(RoomError, match="full") as err:
        room.join("cy", stream="c", rate=48000, now=T0)
    assert err.value.code == "room_full"
    room.leave("bob", now=T0 + 1)
    with pytest.raises(RoomError) as err:
        room.join("cy", stream="a", rate=48000, now=T0 + 2)
    assert err.value.code == "already_seated"
    assert kinds(room.join("cy", stream="c", rate=48000, now=T0 + 2)) == [("joined", "cy", 2.0)]


@pytest.mark.parametrize("name", ["a", "Team-7", "x.y_z", "9" * 64])
def test_good_room_names(name):
    assert check_room_name(name) == name


@pytest.mark.parametrize("name", ["", "-x", ".hidden", "a/b", "a b", "é", "x" * 65, None, 7,
                                  "a\n", "room#1", "room+1"])
def test_invalid_room_names(name):
    with pytest.raises(RoomError) as err:
        check_room_name(name)
    assert err.value.code == "invalid_room"
    with pytest.raises(RoomError) as err:
        Rooms().join(name, "ann", stream="s", rate=48000, now=T0)  # type: ignore[arg-type]
    assert err.value.code == "invalid_room"


@pytest.mark.parametrize("name", ["ann", "Ann Lee", "Zoë", "李", "o'neil", "x" * 64])
def test_good_participant_names(name):
    assert check_participant(name) == name


@pytest.mark.parametrize("name", ["", " ann", "ann ", "a/b", "a+b", "a#b", "a\tb", "a\x00",
                                  "x" * 65, None])
def test_invalid_participant_names(name):
    room = Room("r", now=T0)
    with pytest.raises(RoomError) as err:
        room.join(name, stream="s", rate=48000, now=T0)  # type: ignore[arg-type]
    assert err.value.code == "invalid_name"
    assert len(room) == 0


def test_rooms_per_server_and_failed_first_joins_leave_no_room():
    rooms = Rooms(RoomLimits(max_rooms=2, grace=5))
    r1, ev = rooms.join("one", "ann", stream="s1", rate=48000, now=T0)
    assert kinds(ev) == [("joined", "ann", 0.0)] and r1.name == "one"
    with pytest.raises(RoomError):
        rooms.join("two", "bad/name", stream="s2", rate=48000, now=T0)
    assert "two" not in rooms and len(rooms) == 1
    rooms.join("two", "bob", stream="s2", rate=48000, now=T0 + 1)
    with pytest.raises(RoomError, match="at most 2") as err:
        rooms.join("three", "cy", stream="s3", rate=48000, now=T0 + 2)
    assert err.value.code == "too_many_rooms"
    # joining an open room is not limited by the room count
    r1b, ev = rooms.join("one", "dee", stream="s4", rate=48000, now=T0 + 3)
    assert r1b is r1 and kinds(ev) == [("joined", "dee", 3.0)]
    # a room in trouble does not affect the others
    rooms.get("two").leave("bob", now=T0 + 4)
    ev = rooms.tick(T0 + 10)
    assert [(e.type, e.room) for e in ev] == [("ended", "two")]
    assert rooms.names() == ["one"] and len(rooms.get("one")) == 2
    rooms.join("three", "cy", stream="s3", rate=48000, now=T0 + 11)  # its place is free
    with pytest.raises(RoomError) as err:
        rooms.get("two")
    assert err.value.code == "no_room"


@pytest.mark.parametrize(("call", "code"), [
    (lambda r: r.leave("nobody", now=T0), "not_in_room"),
    (lambda r: r.speech("ann", "level", 1.0, now=T0), "bad_event"),
    (lambda r: r.speech("ann", "speech_start", float("nan"), now=T0), "bad_time"),
    (lambda r: r.join("bob", stream="", rate=48000, now=T0), "bad_stream"),
    (lambda r: r.join("bob", stream="b", rate=0, now=T0), "bad_stream"),
    (lambda r: r.join("bob", stream="b", rate=48000, offset=-1, now=T0), "bad_stream"),
    (lambda r: r.join("bob", stream="b", rate=48000, offset=1.5, now=T0), "bad_stream"),
    (lambda r: (r.tick(T0 + 5), r.tick(T0 + 4)), "bad_time"),
    (lambda r: r.mute("ann", True, now=float("inf")), "bad_time"),
    (lambda r: r.disconnect("nobody", now=T0), "not_in_room"),
])
def test_bad_calls_get_clear_errors(call, code):
    room = Room("r", now=T0)
    room.join("ann", stream="a", rate=48000, now=T0)
    with pytest.raises(RoomError) as err:
        call(room)
    assert err.value.code == code
    assert [s.participant for s in room] == ["ann"]  # nothing else changed


@pytest.mark.parametrize("kwargs", [{"max_seats": 0}, {"max_rooms": True}, {"grace": -1},
                                    {"seat_grace": float("nan")}, {"max_seats": 2.5}])
def test_bad_limits(kwargs):
    with pytest.raises(RoomError) as err:
        RoomLimits(**kwargs)
    assert err.value.code == "bad_limits"
