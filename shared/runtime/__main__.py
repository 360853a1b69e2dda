"""`python -m shared.runtime`: the embedded Functions runtime (API, queue consumer, timers)."""

from shared.runtime.host import main

if __name__ == "__main__":
    raise SystemExit(main())
