"""fedkt.deploy: FedCoLLM across machines on Flower's deployment engine.

A SuperLink (started by `fedkt server`) relays messages between the FedCoLLM ServerApp and
one SuperNode per client (`fedkt client`), each on its own machine with its own rows. The apps
themselves are the simulation's (`fedkt.federation.fedcollm`); this package only adds what a
deployment needs: apps that read their settings and rows from Flower's run and node config
(`apps`), the Flower processes and their TLS and node-authentication flags (`launch`) and the
client's rows on disk (`rows`). Certificates for trials: `fedkt.certs`.
"""
