CREATE OR REPLACE PACKAGE billing_pkg AS
  PROCEDURE sync_billing;
  FUNCTION count_billing RETURN NUMBER;
END billing_pkg;
