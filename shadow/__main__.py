from shadow.cli.main import main

raise SystemExit(main())
