"""The soak's verdicts (`handray.serve.soak`): bad inputs refused with a JSON 4xx and /healthz
answered 200, except that, with a replica killed, one in flight on it may get the retryable
JSON 503 a good request gets then."""

from handray.serve.loadgen import Outcome, Probe
from handray.serve.soak import HEALTH_PROBE, Kill, SoakReport, describe_polls, verdicts

BAD = Probe("not an image", b"nope", bad=True)


def outcome(status: int | None, json_error: bool = True, retry_after: bool = False) -> Outcome:
    return Outcome(0.0, BAD, status, 0.1, json_error=json_error, retry_after=retry_after)


def test_bad_inputs_must_be_refused_with_a_json_4xx():
    refused, retryable = outcome(400), outcome(503, retry_after=True)
    report = SoakReport(60.0, 30.0, outcomes=[refused, retryable, outcome(500, json_error=False)])
    assert len(report.bad_not_4xx_json()) == 2  # without a kill even a retryable 503 is wrong


def test_with_a_replica_killed_a_retryable_503_is_what_a_bad_input_in_flight_gets():
    killed = SoakReport(60.0, 30.0, kills=[Kill("Ingress", at=10.0)])
    killed.outcomes = [
        outcome(400),
        outcome(503, retry_after=True),
        outcome(503, retry_after=False),  # no Retry-After: not the server's answer
        outcome(500, json_error=False),
        outcome(None, json_error=False),
    ]
    assert [o.status for o in killed.bad_not_4xx_json()] == [503, 500, None]


def poll(started: float, status: int | None, retry_after: bool = True) -> Outcome:
    json_error = status is not None and status != 200
    return Outcome(started, HEALTH_PROBE, status, 0.5, json_error, retry_after and json_error)


def test_healthz_may_answer_a_retryable_503_only_while_a_killed_replica_is_replaced():
    polls = [
        poll(5.0, 200),
        poll(9.8, 503),  # sent just before the kill at 10 s, answered after it
        poll(12.0, 503),
        poll(13.0, 503, retry_after=False),  # not the server's retryable answer
        poll(15.0, None),  # no reply at all
        poll(31.0, 503),  # the new replica served at 30 s: no excuse left
    ]
    killed = SoakReport(60.0, 30.0, health=polls, kills=[Kill("Ingress", 10.0, 20.0)])
    assert [p.started for p in killed.health_failures()] == [13.0, 15.0, 31.0]
    steady = SoakReport(60.0, 30.0, health=polls)
    assert [p.started for p in steady.health_failures()] == [9.8, 12.0, 13.0, 15.0, 31.0]
    (row,) = [row for row in verdicts(killed) if row[0] == "/healthz failures"]
    assert row == ("/healthz failures", "3 (503 at 13 s, no reply at 15 s, 503 at 31 s)", False)
    assert describe_polls([]) == "0"
