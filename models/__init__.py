"""kkoma's core, shared by the live and offline drivers: settings, the CQT, networks, streaming inference,
note tracking and the shipped weights. Importing this package is cheap; heavy modules load on use."""
