"""Time to issue one user's full credential bundle vs. three RSA-2048 keygens (the old way).

Earlier facilities generated an RSA-2048 key per certificate inside the hub's
event loop; a session needs three (scheduler, client, worker).  Both are timed
in the same run; the figure that matters is the ratio.

    python3 -m bench.credentials [--repeat N]    (from the repository root)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from cryptography.hazmat.primitives.asymmetric import rsa

from tests.facilities import MasterSecrets, new_facility


def timed(fn, repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        facility = new_facility(tmp, MasterSecrets.fresh(), xcache_site="T2_US_Bench")
        facility.load_secrets()
        facility.issue_bundle("warmup", access_token="x")
        bundle = timed(lambda: facility.issue_bundle("alice", access_token="at"), args.repeat)
        rsa3 = timed(lambda: [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)], args.repeat)
    b_med, r_med = statistics.median(bundle), statistics.median(rsa3)
    print(f"full bundle (CA + 3 ECDSA P-256 certs, IDTOKEN, macaroon): median {b_med * 1e3:.2f} ms, max {max(bundle) * 1e3:.2f} ms")
    print(f"3 x RSA-2048 keygen (baseline):                            median {r_med * 1e3:.2f} ms, max {max(rsa3) * 1e3:.2f} ms")
    print(f"ratio baseline / bundle: {r_med / b_med:.1f}x  (n={args.repeat} each)")


if __name__ == "__main__":
    main()
