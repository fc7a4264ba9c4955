"""The SDK's retries against a scripted transport, without a server (the faults of real components:
tests/integration/test_faults.py)."""

from __future__ import annotations

import pytest


def test_the_sdk_retries_busy_answers_and_dropped_connections_honouring_retry_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Client and AsyncClient against a scripted transport: 429/502/503/504 and connection errors are tried again
    (`retries` more times) after Retry-After or `backoff * 2**n`; other errors, and the last try's, are raised."""
    import asyncio

    import httpx
    import tenacity

    from bigearth.api.schemas import ServiceError
    from bigearth.client import AsyncClient, Client

    answers: list[httpx.Response | Exception] = []
    waits: list[float] = []
    wait = Client._wait

    def spy(self: Client | AsyncClient, state: tenacity.RetryCallState) -> float:
        waits.append(wait(self, state))
        return waits[-1]

    for cls in (Client, AsyncClient):
        monkeypatch.setattr(cls, "_wait", spy)

    def handler(request: httpx.Request) -> httpx.Response:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def busy(status: int, after: str | None = None) -> httpx.Response:
        headers = {"Retry-After": after} if after else {}
        return httpx.Response(status, headers=headers, json={"error": "unavailable", "message": "busy"})

    ok = httpx.Response(200, json={"status": "ok"})
    transport = httpx.MockTransport(handler)
    with Client("http://svc", retries=3, backoff=0.001) as c:
        c._http.close()
        c._http = httpx.Client(base_url="http://svc", transport=transport)
        answers[:] = [httpx.ConnectError("refused"), busy(503, "0.02"), busy(429), ok]
        assert c.health() and not answers and waits == [0.001, 0.02, 0.004]
        answers[:] = [busy(502), busy(504), busy(503), busy(503, "0")]
        with pytest.raises(ServiceError, match="503 unavailable: busy") as e:
            c.health()  # 4 tries, then the last answer
        assert e.value.status == 503 and not answers and waits[3:6] == [0.001, 0.002, 0.004]
        waits.clear()
        answers[:] = [httpx.Response(422, json={"error": "invalid", "message": "no", "field": "k"})]
        with pytest.raises(ServiceError, match="422 invalid") as e:
            c.health()  # not retried
        assert e.value.field == "k" and not waits
        answers[:] = [httpx.ConnectError("refused")] * 4
        with pytest.raises(httpx.ConnectError, match="refused"):
            c.health()
        assert not answers

    async def run_async() -> None:
        async with AsyncClient("http://svc", retries=1, backoff=0.001) as ac:
            await ac._http.aclose()
            ac._http = httpx.AsyncClient(base_url="http://svc", transport=transport)
            answers[:] = [
                httpx.ReadTimeout("slow"),
                httpx.Response(200, json={"patch_ids": [], "offset": 0, "total": 0}),
            ]
            assert (await ac.patches()).total == 0 and not answers
            answers[:] = [busy(503, "0.01"), busy(503)]
            with pytest.raises(ServiceError, match="503"):
                await ac.patches()

    waits.clear()
    asyncio.run(run_async())
    assert waits[:2] == [0.001, 0.01] and not answers
