CREATE OR REPLACE PACKAGE audit_pkg AS
  PROCEDURE sync_audit;
  FUNCTION count_audit RETURN NUMBER;
END audit_pkg;
