"""What a simulated worker is made of: a profile, page understanding, perception, answering
and a browser. The crowd of them (the threads) is ``include.crowd_sandbox.workers``, whose
docstring is the specification: how each profile behaves and how a question page is understood.
"""
