from kichat.sim.cli import main

raise SystemExit(main())
