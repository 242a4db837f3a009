"""The scheduler's live web dashboard: ``model`` (what it shows, pure) and ``server``
(its routes on the scheduler's ``--dashboard-address`` server). See docs/dashboard.md."""
