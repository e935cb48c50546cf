"""Which method answers, and what does the engine get back? No sockets here.

- :mod:`.datasource`: the API a handler author subclasses;
- :mod:`.dispatcher`: one signed request in, one :class:`~.answer.Answer` out, never raising;
- :mod:`.answer`: the answer and every body the engine can get;
- :mod:`.replay`: answers kept by ``webhook-id``;
- :mod:`.deadlines`: request timeouts, one timer for all;
- :mod:`.workers`: the threads plain ``def`` handlers run in, and stuck calls;
- :mod:`.failures`: what a failed request logs, and what the engine is told;
- :mod:`.loader`: the user's ``module:attr``.
"""
