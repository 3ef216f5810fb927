"""The desktop client: a presenter in plain Python and thin Tk views.

The network runs on an asyncio loop in a background thread (:mod:`.network`); the Tk thread
drains a queue of its events in bounded batches (:mod:`.app`) and hands them to the
:class:`~.presenter.Presenter`, which decides what the views (:mod:`.views`) show. Nothing but
:mod:`.views`, :mod:`.theme` and :mod:`.app` imports tkinter.
"""
