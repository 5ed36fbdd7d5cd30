"""Two server processes behind one port (nginx), as docs/deployment.md says to run them.

The voice webhooks reach the processes round robin. Each process names its own
``WORKER_PREFIX`` in the TwiML's stream URL, so every call's stream reaches the
process that issued its one-time stream token: every call is answered and recorded,
with signatures checked on the webhook (no prefix) and on the stream (prefix). Without
the prefix, half the streams would reach the other process and be refused.
"""

from __future__ import annotations

import asyncio

from offline.caller import run_call
from offline.proxy import workers_behind_nginx
from tests.support import SERVER_ENV, TOKEN, ended_record, trimmed_wav


def test_calls_through_one_port_each_come_back_to_the_process_that_answered(tmp_path):
    wav = trimmed_wav(tmp_path, 2.5)
    with workers_behind_nginx(tmp_path, 2, **SERVER_ENV) as (proxy, _urls):
        workers = ("/w1", "/w2")

        async def calls():
            # One after the other: round robin then sends each call's stream to the
            # process that did not answer its webhook, unless the TwiML names it.
            results = [await run_call(proxy, wav, auth_token=TOKEN, public_base_url=proxy, reply_timeout_s=15)
                       for _ in range(2)]
            records = [await ended_record(proxy, r.call_sid, timeout_s=5) for r in results]
            return results, records

        results, records = asyncio.run(calls())
        served = []
        for result, record in zip(results, records):
            assert result.greeting_ms is not None, result.twiml  # the stream reached its process
            assert all(u["replied"] for u in result.utterances)
            roles = [t["role"] for t in record["turns"]]
            assert roles[:3] == ["assistant", "user", "assistant"], record
            stream_url = proxy.replace("http", "ws") + "{}/twilio/media-stream"
            served += [p for p in workers if stream_url.format(p) in result.twiml]
        assert sorted(served) == ["/w1", "/w2"]  # round robin: each process took one call
