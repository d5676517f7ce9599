from weakground.cli import main

raise SystemExit(main())
