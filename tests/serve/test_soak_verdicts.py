"""The soak's verdicts on bad inputs (`handray.serve.soak`): refused with a JSON 4xx, except
that, with a replica killed, one in flight on it may get the retryable JSON 503 a good request
gets then."""

from handray.serve.loadgen import Outcome, Probe
from handray.serve.soak import Kill, SoakReport

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
