from fusegw.cli import main

raise SystemExit(main())
