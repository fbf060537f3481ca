from nsattach.cli import main

raise SystemExit(main())
