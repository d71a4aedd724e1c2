"""The demos behind ``fpmon demo`` and what they run on.

- :mod:`monitor.demo.grpo`: a real TRL GRPO run that learns to game its reward, watched through a sidecar;
- :mod:`monitor.demo.particles`: the particle-solver demo (``fpmon demo --particles``);
- :mod:`monitor.demo.toy`: the hackable toy GRPO task (tiny causal LM, proxy/true/control rewards);
- :mod:`monitor.demo.sidecar`: ``fpmon serve`` as a child process on a free loopback port.

Nothing is imported here: each submodule pulls in only what it needs (the toy task needs ``transformers``).
"""
