"""``python -m account_merge``: the account-merge command line."""

from account_merge.cli import main

raise SystemExit(main())
