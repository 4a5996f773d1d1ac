CREATE OR REPLACE PACKAGE ledger_pkg AS
  PROCEDURE sync_ledger;
  FUNCTION count_ledger RETURN NUMBER;
END ledger_pkg;
