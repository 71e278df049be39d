"""``lit-rlhf label``: people rank the K sampled responses of each prompt in a local web app.

The human path of InstructGPT's step 2 (section 3.4 and appendix B): ``lit-rlhf sample`` writes K
responses per prompt, ``lit-rlhf label serve`` shows them to labelers (ranking with ties, a 1-7
score and the paper's metadata flags per response), and ``lit-rlhf label export`` writes comparison
records that ``configs/rm.yaml`` trains on. ``label serve --pairs`` is the paper's main measurement
instead: two policies' responses side by side, and ``label stats`` their win rates
(:mod:`lit_rlhf.label.pairs`). Judgments live in SQLite (WAL, one transaction each). docs/labeling.md
describes both modes, the pairs file, and deployment behind an HTTPS proxy.

Only :mod:`lit_rlhf.label.server` imports the web framework (Flask, served by waitress), and only
when ``label serve`` runs; storage, export and stats are stdlib only.
"""
