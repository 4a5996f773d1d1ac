CREATE OR REPLACE PACKAGE payroll_pkg AS
  PROCEDURE sync_payroll;
  FUNCTION count_payroll RETURN NUMBER;
END payroll_pkg;
