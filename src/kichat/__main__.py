from kichat.cli import main

raise SystemExit(main())
