"""``drimbox sandbox``: the whole DRIM-M chain on loopback in one command, for a first hour
with the gateway or for a vendor testing their own LPS, DRIMbox or viewer against ours
(docs/sandbox.md).

* :mod:`gateway.sandbox.layout`: the ports (fixed offsets from ``--base-port``) and the
  paths under ``--dir``;
* :mod:`gateway.sandbox.configs`: the Source's and the Consumer's settings (TOML), the
  development whitelist;
* :mod:`gateway.sandbox.sample`: the sample study (INS test identity) and its report (ORU);
* :mod:`gateway.sandbox.supervisor`: the child processes, started and stopped together;
* :mod:`gateway.sandbox.run`: the sequence (PKI, processes, sample, publication, "ready").
"""
