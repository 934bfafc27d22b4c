from emfence.cli import main

raise SystemExit(main())
